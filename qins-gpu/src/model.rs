//! A loaded model's forward pass on the GPU.
//!
//! The weights come from the CPU [`Model`] as its architecture file mapped
//! them ([`LayerView`]): phi3 and llama are not described twice. Every
//! layer's QKV product fills one `[q | k | v]` buffer (one fused matrix or
//! three written side by side) and its gate/up product one `[gate | up]`
//! buffer, so the block below is the same for both. Rotary tables come
//! from the model's own [`Rope`] (longrope factors, attention factor), a
//! few kB per call; only the logits come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use qins_core::model::layers::Linear;
use qins_core::model::rope::Rope;
use qins_core::model::{BatchStep, DecodeBatcher, LayerView, Model, ModelConfig};

use crate::GpuError;
use crate::device::{GpuContext, TrackedBuffer};
use crate::matmul::{OutputView, QinsMatmul};
use crate::matrix::GpuMatrix;
use crate::ops::{CacheSlot, Columns, Heads, LayerCache, MAX_HEAD_DIM, Ops};
use crate::shaders::KvType;

struct GpuLayer {
    input_norm: TrackedBuffer,
    /// Outputs side by side: `[q | k | v]`.
    qkv: Vec<GpuMatrix>,
    o_proj: GpuMatrix,
    post_attention_norm: TrackedBuffer,
    /// Outputs side by side: `[gate | up]`.
    gate_up: Vec<GpuMatrix>,
    down: GpuMatrix,
}

/// A conversation's keys and values on the GPU.
pub struct GpuCache {
    layers: Vec<LayerCache>,
    capacity: usize,
    len: usize,
}

impl GpuCache {
    /// Tokens whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every token from `len` on (prefix reuse keeps the rest).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A cache with no room, holding no GPU memory (the placeholder while
    /// a sequence's cache is lent to a batched pass).
    pub fn empty() -> Self {
        Self {
            layers: Vec::new(),
            capacity: 0,
            len: 0,
        }
    }

    /// Bytes the cache holds on the GPU.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.keys.size() + l.values.size())
            .sum()
    }
}

pub struct GpuModel {
    ctx: Arc<GpuContext>,
    config: ModelConfig,
    matmul: QinsMatmul,
    ops: Ops,
    embed: GpuMatrix,
    layers: Vec<GpuLayer>,
    norm: TrackedBuffer,
    /// `None` when tied to the embedding.
    lm_head: Option<GpuMatrix>,
    rope: Rope,
    /// Concurrent decode steps of different sequences share one pass.
    batcher: DecodeBatcher<GpuCache, GpuError>,
}

/// One sequence's share of a forward pass.
struct Segment<'c> {
    cache: &'c mut GpuCache,
    start: usize,
    n: usize,
}

impl GpuModel {
    /// Uploads `model`'s weights to `ctx`, with the K/V cache in `kv`
    /// (f16 needs the device's shader-f16).
    pub fn upload(ctx: Arc<GpuContext>, model: &Model, kv: KvType) -> Result<Self, GpuError> {
        if kv == KvType::F16 && !ctx.has_shader_f16() {
            return Err(GpuError::Device(format!(
                "{} has no shader-f16 for an f16 cache",
                ctx.adapter()
            )));
        }
        let config = model.config().clone();
        if config.head_dim > MAX_HEAD_DIM || !config.head_dim.is_multiple_of(2) {
            return Err(GpuError::Unsupported(format!(
                "head_dim {} (the attention shader takes even sizes up to {MAX_HEAD_DIM})",
                config.head_dim
            )));
        }
        let c = &*ctx;
        let vector = |name: &str, values: &[f32]| {
            c.buffer_with(
                name,
                bytemuck::cast_slice(values),
                wgpu::BufferUsages::STORAGE,
            )
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (i, view) in model.layer_views().into_iter().enumerate() {
            layers.push(upload_layer(
                c,
                i,
                &view,
                vector(&format!("layer {i} input norm"), view.input_norm)?,
                vector(
                    &format!("layer {i} post-attention norm"),
                    view.post_attention_norm,
                )?,
            )?);
        }
        let embed = matrix(c, "embedding", model.embedding())?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(matrix(c, "lm_head", model.lm_head())?)
        };
        let norm = vector("final norm", model.final_norm())?;
        Ok(Self {
            matmul: QinsMatmul::new(c),
            ops: Ops::new(c, kv),
            embed,
            layers,
            norm,
            lm_head,
            rope: model.rope().clone(),
            batcher: DecodeBatcher::default(),
            config,
            ctx,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The cache's element type.
    pub fn kv_type(&self) -> KvType {
        self.ops.kv()
    }

    /// Bytes a decode step reads from the weights: every matrix's codes,
    /// sign bits and tables, `lm_head` included, the embedding (one row
    /// per token) not.
    pub fn decode_weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                let parts = l.qkv.iter().chain(&l.gate_up);
                parts.map(GpuMatrix::bytes).sum::<u64>() + l.o_proj.bytes() + l.down.bytes()
            })
            .sum();
        layers + self.lm_head.as_ref().unwrap_or(&self.embed).bytes()
    }

    fn heads(&self) -> Heads {
        Heads {
            heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// A cache for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> GpuCache {
        GpuCache {
            layers: (0..self.config.num_hidden_layers)
                .map(|_| self.ops.layer_cache(&self.ctx, self.heads(), capacity))
                .collect(),
            capacity,
            len: 0,
        }
    }

    /// Runs `tokens` after the cached ones and returns the logits of the last.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, GpuError> {
        self.run(tokens, &mut [(cache, tokens.len())], cancel, false)
    }

    /// Like [`GpuModel::forward`] but returns the logits of every token.
    pub fn forward_all(
        &self,
        tokens: &[u32],
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, GpuError> {
        self.run(tokens, &mut [(cache, tokens.len())], cancel, true)
    }

    /// Runs one generated token, batched with whatever other sequences
    /// step at the same time (qins-core's [`DecodeBatcher`], as on the CPU).
    pub fn decode_step(
        &self,
        token: u32,
        cache: &mut GpuCache,
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>, GpuError> {
        self.batcher.step(self, token, cache, cancel)
    }

    /// Forward passes [`GpuModel::decode_step`] has run and the steps they
    /// served (more steps than passes: steps were batched).
    pub fn decode_pass_counts(&self) -> (u64, u64) {
        self.batcher.counts()
    }

    /// One new token for each of several sequences in one pass (the
    /// weights are read once for all); each sequence's logits, in order.
    pub fn forward_batch(
        &self,
        steps: &mut [(u32, &mut GpuCache)],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let tokens: Vec<u32> = steps.iter().map(|(token, _)| *token).collect();
        let mut segments: Vec<(&mut GpuCache, usize)> = steps
            .iter_mut()
            .map(|(_, cache)| (&mut **cache, 1))
            .collect();
        let logits = self.run(&tokens, &mut segments, cancel, false)?;
        let vocab = self.config.vocab_size;
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    /// `tokens` split into consecutive segments of one sequence each
    /// (`(cache, count)`); the logits of every token (`all`) or of each
    /// segment's last.
    fn run(
        &self,
        tokens: &[u32],
        parts: &mut [(&mut GpuCache, usize)],
        cancel: &AtomicBool,
        all: bool,
    ) -> Result<Vec<f32>, GpuError> {
        if tokens.is_empty() || parts.iter().any(|(_, n)| *n == 0) {
            return Err(GpuError::NoTokens);
        }
        debug_assert_eq!(parts.iter().map(|(_, n)| n).sum::<usize>(), tokens.len());
        if let Some(&t) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(GpuError::TokenOutOfRange(t));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (cache, n) in parts.iter_mut() {
            let start = cache.len;
            if start + *n > cache.capacity {
                return Err(GpuError::ContextFull {
                    needed: start + *n,
                    capacity: cache.capacity,
                });
            }
            segments.push(Segment {
                cache,
                start,
                n: *n,
            });
        }
        let logits = self.run_segments(tokens, &mut segments, cancel, all)?;
        for segment in &mut segments {
            segment.cache.len = segment.start + segment.n;
        }
        Ok(logits)
    }

    fn run_segments(
        &self,
        tokens: &[u32],
        segments: &mut [Segment<'_>],
        cancel: &AtomicBool,
        all: bool,
    ) -> Result<Vec<f32>, GpuError> {
        let ctx = &*self.ctx;
        let c = &self.config;
        let heads = self.heads();
        let (h, ff, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_dim, kv_dim) = (heads.heads * d, heads.kv_heads * d);
        let width = q_dim + 2 * kv_dim;
        let total = tokens.len();

        // The rotary tables of every token, each segment at its positions
        // (transformers picks longrope's factors from max position + 1).
        let mut cos = Vec::with_capacity(total * d / 2);
        let mut sin = Vec::with_capacity(total * d / 2);
        for s in segments.iter() {
            let (sc, ss) = self.rope.tables(s.start..s.start + s.n, s.start + s.n);
            cos.extend(sc);
            sin.extend(ss);
        }
        cos.extend(sin);
        let storage = wgpu::BufferUsages::STORAGE;
        let rope_table = ctx.buffer_with("rope", bytemuck::cast_slice(&cos), storage)?;
        let token_buffer = ctx.buffer_with("tokens", bytemuck::cast_slice(tokens), storage)?;
        let activations =
            |name: &str, width: usize| ctx.buffer(name, (total * width * 4) as u64, storage);
        let x = activations("x", h);
        let normed = activations("normed", h);
        let qkv = activations("qkv", width);
        let attended = activations("attended", q_dim);
        let gate_up = activations("gate_up", 2 * ff);
        let activated = activations("activated", ff);

        let mut encoder = self.encoder();
        let mut uniforms =
            vec![
                self.ops
                    .embed(ctx, &mut encoder, &self.embed, &token_buffer, total, &x),
            ];
        // At most two layers in flight: a cancelled reply stops within a
        // layer or two, prefill included.
        let mut in_flight: Option<wgpu::SubmissionIndex> = None;
        for (index, layer) in self.layers.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Err(GpuError::Cancelled);
            }
            let u = &mut uniforms;
            u.push(self.ops.rms_norm(
                ctx,
                &mut encoder,
                &x,
                0,
                total,
                &layer.input_norm,
                h,
                c.rms_norm_eps,
                &normed,
            ));
            u.extend(self.side_by_side(&mut encoder, &layer.qkv, &normed, total, &qkv, width));
            let q_columns = Columns {
                stride: width,
                offset: 0,
            };
            let k_columns = Columns {
                stride: width,
                offset: q_dim,
            };
            u.push(self.ops.rope(
                ctx,
                &mut encoder,
                &qkv,
                total,
                heads.heads,
                d,
                q_columns,
                &rope_table,
            ));
            u.push(self.ops.rope(
                ctx,
                &mut encoder,
                &qkv,
                total,
                heads.kv_heads,
                d,
                k_columns,
                &rope_table,
            ));
            let mut row = 0;
            for s in segments.iter() {
                let cache = &s.cache.layers[index];
                let slot = CacheSlot {
                    start: s.start,
                    capacity: s.cache.capacity,
                };
                u.push(self.ops.kv_store(
                    ctx,
                    &mut encoder,
                    &qkv,
                    row,
                    s.n,
                    width,
                    q_dim,
                    q_dim + kv_dim,
                    heads,
                    cache,
                    slot,
                ));
                u.push(self.ops.attention(
                    ctx,
                    &mut encoder,
                    &qkv,
                    row,
                    s.n,
                    q_columns,
                    heads,
                    cache,
                    slot,
                    &attended,
                ));
                row += s.n;
            }
            let residual = OutputView {
                stride: h,
                offset: 0,
                accumulate: true,
            };
            u.push(self.matmul.encode(
                ctx,
                &mut encoder,
                &layer.o_proj,
                &attended,
                total,
                &x,
                residual,
            ));
            u.push(self.ops.rms_norm(
                ctx,
                &mut encoder,
                &x,
                0,
                total,
                &layer.post_attention_norm,
                h,
                c.rms_norm_eps,
                &normed,
            ));
            u.extend(self.side_by_side(
                &mut encoder,
                &layer.gate_up,
                &normed,
                total,
                &gate_up,
                2 * ff,
            ));
            u.push(self.ops.swiglu(
                ctx,
                &mut encoder,
                &gate_up,
                total,
                ff,
                2 * ff,
                0,
                ff,
                &activated,
            ));
            u.push(self.matmul.encode(
                ctx,
                &mut encoder,
                &layer.down,
                &activated,
                total,
                &x,
                residual,
            ));
            let submitted = ctx
                .queue
                .submit([std::mem::replace(&mut encoder, self.encoder()).finish()]);
            uniforms.clear();
            if let Some(previous) = in_flight.replace(submitted) {
                ctx.device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(previous),
                        timeout: None,
                    })
                    .map_err(|e| GpuError::Device(e.to_string()))?;
            }
        }

        // The rows whose logits are wanted: all, or each segment's last.
        let wanted: Vec<usize> = if all {
            (0..total).collect()
        } else {
            let mut last = 0;
            segments
                .iter()
                .map(|s| {
                    last += s.n;
                    last - 1
                })
                .collect()
        };
        let contiguous = wanted.windows(2).all(|w| w[1] == w[0] + 1);
        let (first, count) = if contiguous {
            (wanted[0], wanted.len())
        } else {
            (0, total)
        };
        let vocab = c.vocab_size;
        let logits = ctx.buffer(
            "logits",
            (count * vocab * 4) as u64,
            storage | wgpu::BufferUsages::COPY_SRC,
        );
        uniforms.push(self.ops.rms_norm(
            ctx,
            &mut encoder,
            &x,
            first,
            count,
            &self.norm,
            h,
            c.rms_norm_eps,
            &normed,
        ));
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        uniforms.push(self.matmul.encode(
            ctx,
            &mut encoder,
            lm_head,
            &normed,
            count,
            &logits,
            OutputView::dense(vocab),
        ));
        ctx.queue.submit([encoder.finish()]);
        let values = ctx.read_f32(&logits, count * vocab)?;
        if contiguous {
            return Ok(values);
        }
        Ok(wanted
            .iter()
            .flat_map(|&row| values[row * vocab..(row + 1) * vocab].iter().copied())
            .collect())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("forward"),
            })
    }

    /// The products of `parts` written side by side into rows `width` wide.
    fn side_by_side(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[GpuMatrix],
        x: &wgpu::Buffer,
        n: usize,
        out: &wgpu::Buffer,
        width: usize,
    ) -> Vec<TrackedBuffer> {
        let mut offset = 0;
        parts
            .iter()
            .map(|w| {
                let view = OutputView {
                    stride: width,
                    offset,
                    accumulate: false,
                };
                offset += w.rows;
                self.matmul.encode(&self.ctx, encoder, w, x, n, out, view)
            })
            .collect()
    }
}

impl BatchStep for GpuModel {
    type Cache = GpuCache;
    type Error = GpuError;

    fn check_step(&self, token: u32, cache: &GpuCache) -> Result<(), GpuError> {
        if token as usize >= self.config.vocab_size {
            return Err(GpuError::TokenOutOfRange(token));
        }
        if cache.len + 1 > cache.capacity {
            return Err(GpuError::ContextFull {
                needed: cache.len + 1,
                capacity: cache.capacity,
            });
        }
        Ok(())
    }

    fn forward_batch(
        &self,
        steps: &mut [(u32, &mut GpuCache)],
        cancel: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        GpuModel::forward_batch(self, steps, cancel)
    }

    fn empty_cache() -> GpuCache {
        GpuCache::empty()
    }

    fn batch_error(message: String) -> GpuError {
        GpuError::Batch(message)
    }

    fn cancelled() -> GpuError {
        GpuError::Cancelled
    }
}

fn matrix(ctx: &GpuContext, name: &str, linear: &Linear) -> Result<GpuMatrix, GpuError> {
    match linear {
        Linear::Qins(m) => GpuMatrix::upload(ctx, name, m),
        Linear::Dense { .. } => Err(GpuError::Unsupported(format!(
            "{name} is stored in f32 (a --reference-f32 file); the GPU runs QINS matrices"
        ))),
    }
}

fn upload_layer(
    ctx: &GpuContext,
    i: usize,
    view: &LayerView<'_>,
    input_norm: TrackedBuffer,
    post_attention_norm: TrackedBuffer,
) -> Result<GpuLayer, GpuError> {
    let parts = |what: &str, linears: &[&Linear]| -> Result<Vec<GpuMatrix>, GpuError> {
        linears
            .iter()
            .enumerate()
            .map(|(j, l)| matrix(ctx, &format!("layer {i} {what}[{j}]"), l))
            .collect()
    };
    Ok(GpuLayer {
        input_norm,
        qkv: parts("qkv", &view.qkv)?,
        o_proj: matrix(ctx, &format!("layer {i} o_proj"), view.o_proj)?,
        post_attention_norm,
        gate_up: parts("gate_up", &view.gate_up)?,
        down: matrix(ctx, &format!("layer {i} down_proj"), view.down)?,
    })
}

#[cfg(test)]
mod tests;
