//! Transformer models running on resident QINS weights.
//!
//! `phi3.rs` and `llama.rs` map each architecture's tensors onto the
//! layers of this file ([`view`] shows them to other backends);
//! `block.rs` runs the decoder block, on the CPU through this file's
//! [`BlockOps`] (`layers.rs` holds the building blocks, `attention.rs` the
//! attention, `rope.rs` the rotary embeddings and `kv_cache.rs` the
//! preallocated cache) and on the GPU through qins-gpu's.

mod attention;
mod batch;
pub mod block;
mod gemm;
pub mod kv_cache;
pub mod layers;
mod llama;
mod logits;
mod phi3;
pub mod profile;
pub mod rope;
mod view;

use thiserror::Error;

pub use crate::container::config::{Architecture, ModelConfig};
use attention::{attention, attention_one};
pub use batch::DecodeBatcher;
pub use block::{BlockOps, Decoder, Segment, SequenceCache};
pub use kv_cache::{KvCache, KvPrecision};
use layers::{Linear, rms_norm, silu_times, swiglu};
pub use logits::argmax;
use profile::Stage;
use rope::Rope;
pub use view::LayerView;

use crate::kernels::{KernelKind, dispatch, selected_kernel};
use crate::weights::{ResidentWeights, WeightsError};

/// Why a model (on any backend) could not load or run. Backends with
/// errors of their own wrap this one (qins-gpu's `GpuError::Model`).
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
    #[error("this backend does not provide {0}")]
    Unsupported(&'static str),
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

    /// Weight bytes one decode step reads, on any backend: the codes and
    /// sign bits as stored ([`Linear::weight_bytes`]) of every matrix the
    /// step multiplies by, each layer's projections and the head. The
    /// embedding counts only as the head (tied); otherwise a step reads
    /// one row of it. The bench divides this by a step's time.
    pub fn decode_weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layer_views()
            .iter()
            .flat_map(LayerView::matrices)
            .map(Linear::weight_bytes)
            .sum();
        layers + self.lm_head.weight_bytes()
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

    fn embed_tokens(&self, tokens: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut x = vec![0.0f32; tokens.len() * h];
        for (&t, row) in tokens.iter().zip(x.chunks_mut(h)) {
            self.embed.row(t as usize, row);
        }
        x
    }
}

/// A CPU pass's activations, `n` rows each (`x` and `normed` are
/// `n x hidden_size`). Each operation replaces its output vector, as the
/// layers' functions return fresh ones.
pub struct CpuPass {
    n: usize,
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attended: Vec<f32>,
    /// `[gate | up]` rows (fused) or gate and up apart.
    gate_up: Vec<Vec<f32>>,
    activated: Vec<f32>,
    /// Each segment's rotary tables (`cos`, `sin`), in order.
    rope: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Decoder for Model {
    fn batcher(&self) -> &DecodeBatcher<KvCache, ModelError> {
        &self.batcher
    }
}

impl BlockOps for Model {
    type Cache = KvCache;
    type Error = ModelError;
    type Pass = CpuPass;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The pass runs on a worker of the kernels' thread pool (the global
    /// one, or the pool the caller runs in): a pass makes ~7 matrix
    /// products per layer, each split over the pool's threads, and from a
    /// worker each one is a fork-join the caller takes part in, where from
    /// outside the pool (the daemon's generation threads) each would be
    /// handed to the pool and waited for.
    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            return pass();
        }
        rayon::scope(|_| pass())
    }

    fn begin(
        &self,
        tokens: &[u32],
        segments: &[Segment<'_, KvCache>],
    ) -> Result<CpuPass, ModelError> {
        let x = profile::time(Stage::Embed, || self.embed_tokens(tokens));
        let rope = profile::time(Stage::Rope, || {
            segments.iter().map(|s| s.rope_tables(&self.rope)).collect()
        });
        Ok(CpuPass {
            n: tokens.len(),
            x,
            normed: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            attended: Vec::new(),
            gate_up: Vec::new(),
            activated: Vec::new(),
            rope,
        })
    }

    fn attention_norm(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let weight = &self.layers[layer].input_norm;
        pass.normed = profile::time(Stage::Norm, || {
            rms_norm(&pass.x, weight, self.config.rms_norm_eps)
        });
        Ok(())
    }

    fn project_qkv(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let c = &self.config;
        let (q_dim, kv_dim) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let Qkv3 { q, k, v } = profile::time(Stage::Qkv, || {
            project_qkv(
                &self.layers[layer].qkv,
                &pass.normed,
                pass.n,
                q_dim,
                kv_dim,
                self.kernel,
            )
        })?;
        (pass.q, pass.k, pass.v) = (q, k, v);
        Ok(())
    }

    fn rope(
        &self,
        pass: &mut CpuPass,
        segments: &[Segment<'_, KvCache>],
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        profile::time(Stage::Rope, || {
            let mut row = 0;
            for (segment, (cos, sin)) in segments.iter().zip(&pass.rope) {
                let rows = row..row + segment.n;
                rope::apply(&mut pass.q[rows_of(&rows, heads * d)], heads, d, cos, sin);
                rope::apply(
                    &mut pass.k[rows_of(&rows, kv_heads * d)],
                    kv_heads,
                    d,
                    cos,
                    sin,
                );
                row += segment.n;
            }
        });
        Ok(())
    }

    fn attend(
        &self,
        pass: &mut CpuPass,
        layer: usize,
        row: usize,
        segment: &mut Segment<'_, KvCache>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rows = row..row + segment.n;
        let q = &pass.q[rows_of(&rows, heads * d)];
        let kv = rows_of(&rows, kv_heads * d);
        let attended = profile::time(Stage::Attention, || {
            segment
                .cache
                .write(layer, segment.start, &pass.k[kv.clone()], &pass.v[kv]);
            let len = segment.start + segment.n;
            let cache = &*segment.cache;
            if segment.n == 1 {
                return Ok(attention_one(q, heads, d, kv_heads, |head| {
                    cache.head(layer, head, len)
                }));
            }
            attention(q, heads, d, kv_heads, segment.start, |head| {
                cache.head(layer, head, len).to_f32()
            })
        })?;
        pass.attended.extend(attended);
        Ok(())
    }

    fn add_attention_output(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let o_proj = &self.layers[layer].o_proj;
        let out = profile::time(Stage::OProj, || {
            o_proj.forward(&pass.attended, pass.n, self.kernel)
        })?;
        add_assign(&mut pass.x, &out);
        // Consumed: the next layer's segments append from empty.
        pass.attended.clear();
        Ok(())
    }

    fn mlp_norm(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let weight = &self.layers[layer].post_attention_norm;
        pass.normed = profile::time(Stage::Norm, || {
            rms_norm(&pass.x, weight, self.config.rms_norm_eps)
        });
        Ok(())
    }

    fn project_gate_up(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let (normed, n) = (&pass.normed, pass.n);
        pass.gate_up = profile::time(Stage::GateUp, || match &self.layers[layer].gate_up {
            GateUp::Fused(gate_up) => Ok(vec![gate_up.forward(normed, n, self.kernel)?]),
            GateUp::Separate { gate, up } => {
                Linear::forward_many(&[gate, up], normed, n, self.kernel)
            }
        })?;
        Ok(())
    }

    fn silu_times_up(&self, pass: &mut CpuPass) -> Result<(), ModelError> {
        let ff = self.config.intermediate_size;
        pass.activated = profile::time(Stage::Swiglu, || match pass.gate_up.as_slice() {
            [fused] => swiglu(fused, ff),
            [gate, up] => silu_times(gate, up),
            parts => unreachable!(
                "gate/up come as one fused product or two, not {}",
                parts.len()
            ),
        });
        Ok(())
    }

    fn add_mlp_output(&self, pass: &mut CpuPass, layer: usize) -> Result<(), ModelError> {
        let down = &self.layers[layer].down;
        let out = profile::time(Stage::Down, || {
            down.forward(&pass.activated, pass.n, self.kernel)
        })?;
        add_assign(&mut pass.x, &out);
        Ok(())
    }

    fn logits(&self, pass: CpuPass, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        let normed = self.hidden(pass, rows)?;
        profile::time(Stage::LmHead, || {
            self.lm_head.forward(&normed, rows.len(), self.kernel)
        })
    }

    fn hidden(&self, pass: CpuPass, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        let h = self.config.hidden_size;
        let mut wanted = Vec::with_capacity(rows.len() * h);
        for &row in rows {
            wanted.extend_from_slice(&pass.x[row * h..(row + 1) * h]);
        }
        Ok(profile::time(Stage::Norm, || {
            rms_norm(&wanted, &self.norm, self.config.rms_norm_eps)
        }))
    }
}

/// The range of `rows` in a row-major buffer `width` wide.
fn rows_of(rows: &std::ops::Range<usize>, width: usize) -> std::ops::Range<usize> {
    rows.start * width..rows.end * width
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
