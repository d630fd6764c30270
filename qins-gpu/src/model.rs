//! A loaded model's forward pass on the GPU: the decoder block's
//! operations ([`BlockOps`]) as compute passes; qins-core's
//! [`block`](qins_core::model::block) runs them in order, as it runs the
//! CPU's.
//!
//! The weights come from the CPU [`Model`] as its architecture file mapped
//! them ([`LayerView`]): phi3 and llama are not described twice. Every
//! layer's QKV product fills one `[q | k | v]` buffer (one fused matrix or
//! three written side by side) and its gate/up product one `[gate | up]`
//! buffer, so the operations are the same for both. Rotary tables come
//! from the model's own [`Rope`] (longrope factors, attention factor), a
//! few kB per call; only the logits come back.

use std::sync::Arc;

use qins_core::model::block::{BlockOps, Decoder, Fill, Segment, SequenceCache};
use qins_core::model::layers::Linear;
use qins_core::model::rope::Rope;
use qins_core::model::{DecodeBatcher, LayerView, Model, ModelConfig};

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
    fill: Fill,
}

impl GpuCache {
    /// Bytes the cache holds on the GPU.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.keys.size() + l.values.size())
            .sum()
    }
}

impl SequenceCache for GpuCache {
    fn fill(&self) -> Fill {
        self.fill
    }

    fn fill_mut(&mut self) -> &mut Fill {
        &mut self.fill
    }

    fn empty() -> Self {
        Self {
            layers: Vec::new(),
            fill: Fill::default(),
        }
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
    /// [`Model::decode_weight_bytes`] of the model uploaded.
    decode_weight_bytes: u64,
    /// Concurrent decode steps of different sequences share one pass.
    batcher: DecodeBatcher<GpuCache, GpuError>,
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
            decode_weight_bytes: model.decode_weight_bytes(),
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

    /// Weight bytes one decode step reads, counted as on the CPU
    /// ([`Model::decode_weight_bytes`]: the matrices' codes and sign bits,
    /// not the GPU's row padding or decode tables, which
    /// [`GpuContext::allocated_bytes`] counts).
    pub fn decode_weight_bytes(&self) -> u64 {
        self.decode_weight_bytes
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
            fill: Fill { len: 0, capacity },
        }
    }

    /// The products of `parts` on `x`'s rows written side by side into
    /// `out`'s rows, `width` wide.
    fn side_by_side(
        &self,
        rec: &mut Recorder,
        parts: &[GpuMatrix],
        x: &wgpu::Buffer,
        rows: usize,
        out: &wgpu::Buffer,
        width: usize,
    ) {
        let mut offset = 0;
        for w in parts {
            let view = OutputView {
                stride: width,
                offset,
                accumulate: false,
            };
            offset += w.rows;
            let uniform = self
                .matmul
                .encode(&self.ctx, &mut rec.encoder, w, x, rows, out, view);
            rec.uniforms.push(uniform);
        }
    }

    /// `out = rms_norm(x, weight)` over `count` rows of `x` from `first`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm(
        &self,
        rec: &mut Recorder,
        x: &wgpu::Buffer,
        first: usize,
        count: usize,
        weight: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let c = &self.config;
        rec.uniforms.push(self.ops.rms_norm(
            &self.ctx,
            &mut rec.encoder,
            x,
            first,
            count,
            weight,
            c.hidden_size,
            c.rms_norm_eps,
            out,
        ));
    }

    /// `x += w · input` over `rows` rows.
    fn add_product(
        &self,
        rec: &mut Recorder,
        w: &GpuMatrix,
        input: &wgpu::Buffer,
        rows: usize,
        x: &wgpu::Buffer,
    ) {
        let residual = OutputView {
            stride: self.config.hidden_size,
            offset: 0,
            accumulate: true,
        };
        let uniform = self
            .matmul
            .encode(&self.ctx, &mut rec.encoder, w, input, rows, x, residual);
        rec.uniforms.push(uniform);
    }

    /// The `[q | k | v]` rows: their width, and where q, k and v start.
    fn qkv_columns(&self) -> QkvColumns {
        let c = &self.config;
        let q_dim = c.num_attention_heads * c.head_dim;
        let kv_dim = c.num_key_value_heads * c.head_dim;
        let width = q_dim + 2 * kv_dim;
        let at = |offset| Columns {
            stride: width,
            offset,
        };
        QkvColumns {
            width,
            q: at(0),
            k: at(q_dim),
            v: at(q_dim + kv_dim),
        }
    }
}

struct QkvColumns {
    width: usize,
    q: Columns,
    k: Columns,
    v: Columns,
}

/// The commands of a pass not yet submitted, and what they need kept.
struct Recorder {
    encoder: wgpu::CommandEncoder,
    /// The recorded commands' uniforms, kept until their submission.
    uniforms: Vec<TrackedBuffer>,
    /// The previous layer's submission: at most two layers are in flight,
    /// so a cancelled reply stops within a layer or two, prefill included.
    in_flight: Option<wgpu::SubmissionIndex>,
}

impl Recorder {
    fn new(ctx: &GpuContext) -> Self {
        Self {
            encoder: new_encoder(ctx),
            uniforms: Vec::new(),
            in_flight: None,
        }
    }

    /// Submits what is recorded; returns its submission.
    fn submit(&mut self, ctx: &GpuContext) -> wgpu::SubmissionIndex {
        let encoder = std::mem::replace(&mut self.encoder, new_encoder(ctx));
        let submitted = ctx.queue.submit([encoder.finish()]);
        self.uniforms.clear();
        submitted
    }
}

fn new_encoder(ctx: &GpuContext) -> wgpu::CommandEncoder {
    ctx.device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("forward"),
        })
}

/// A GPU pass: its activation buffers (`total` rows each) and the
/// commands recording it.
pub struct GpuPass {
    total: usize,
    rec: Recorder,
    /// Every token's `cos`, then every token's `sin`.
    rope_table: TrackedBuffer,
    /// The token ids the embedding reads.
    tokens: TrackedBuffer,
    x: TrackedBuffer,
    normed: TrackedBuffer,
    qkv: TrackedBuffer,
    attended: TrackedBuffer,
    gate_up: TrackedBuffer,
    activated: TrackedBuffer,
}

impl Decoder for GpuModel {
    fn batcher(&self) -> &DecodeBatcher<GpuCache, GpuError> {
        &self.batcher
    }
}

impl BlockOps for GpuModel {
    type Cache = GpuCache;
    type Error = GpuError;
    type Pass = GpuPass;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn begin(
        &self,
        tokens: &[u32],
        segments: &[Segment<'_, GpuCache>],
    ) -> Result<GpuPass, GpuError> {
        let ctx = &*self.ctx;
        let c = &self.config;
        let total = tokens.len();
        let (cos, sin): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
            segments.iter().map(|s| s.rope_tables(&self.rope)).unzip();
        let table: Vec<f32> = cos.into_iter().chain(sin).flatten().collect();
        let storage = wgpu::BufferUsages::STORAGE;
        let activations =
            |name: &str, width: usize| ctx.buffer(name, (total * width * 4) as u64, storage);
        let mut pass = GpuPass {
            total,
            rec: Recorder::new(ctx),
            rope_table: ctx.buffer_with("rope", bytemuck::cast_slice(&table), storage)?,
            tokens: ctx.buffer_with("tokens", bytemuck::cast_slice(tokens), storage)?,
            x: activations("x", c.hidden_size),
            normed: activations("normed", c.hidden_size),
            qkv: activations("qkv", self.qkv_columns().width),
            attended: activations("attended", c.num_attention_heads * c.head_dim),
            gate_up: activations("gate_up", 2 * c.intermediate_size),
            activated: activations("activated", c.intermediate_size),
        };
        let rec = &mut pass.rec;
        rec.uniforms.push(self.ops.embed(
            ctx,
            &mut rec.encoder,
            &self.embed,
            &pass.tokens,
            total,
            &pass.x,
        ));
        Ok(pass)
    }

    fn attention_norm(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let weight = &self.layers[layer].input_norm;
        self.rms_norm(&mut pass.rec, &pass.x, 0, pass.total, weight, &pass.normed);
        Ok(())
    }

    fn project_qkv(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let parts = &self.layers[layer].qkv;
        let width = self.qkv_columns().width;
        self.side_by_side(
            &mut pass.rec,
            parts,
            &pass.normed,
            pass.total,
            &pass.qkv,
            width,
        );
        Ok(())
    }

    /// Every row at once: the table holds each row's position.
    fn rope(
        &self,
        pass: &mut GpuPass,
        _segments: &[Segment<'_, GpuCache>],
    ) -> Result<(), GpuError> {
        let heads = self.heads();
        let columns = self.qkv_columns();
        for (count, at) in [(heads.heads, columns.q), (heads.kv_heads, columns.k)] {
            let rec = &mut pass.rec;
            rec.uniforms.push(self.ops.rope(
                &self.ctx,
                &mut rec.encoder,
                &pass.qkv,
                pass.total,
                count,
                heads.head_dim,
                at,
                &pass.rope_table,
            ));
        }
        Ok(())
    }

    fn attend(
        &self,
        pass: &mut GpuPass,
        layer: usize,
        row: usize,
        segment: &mut Segment<'_, GpuCache>,
    ) -> Result<(), GpuError> {
        let (heads, columns) = (self.heads(), self.qkv_columns());
        let cache = &segment.cache.layers[layer];
        let slot = CacheSlot {
            start: segment.start,
            capacity: segment.cache.capacity(),
        };
        let (ctx, rec) = (&*self.ctx, &mut pass.rec);
        rec.uniforms.push(self.ops.kv_store(
            ctx,
            &mut rec.encoder,
            &pass.qkv,
            row,
            segment.n,
            columns.width,
            columns.k.offset,
            columns.v.offset,
            heads,
            cache,
            slot,
        ));
        rec.uniforms.push(self.ops.attention(
            ctx,
            &mut rec.encoder,
            &pass.qkv,
            row,
            segment.n,
            columns.q,
            heads,
            cache,
            slot,
            &pass.attended,
        ));
        Ok(())
    }

    fn add_attention_output(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let o_proj = &self.layers[layer].o_proj;
        self.add_product(&mut pass.rec, o_proj, &pass.attended, pass.total, &pass.x);
        Ok(())
    }

    fn mlp_norm(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let weight = &self.layers[layer].post_attention_norm;
        self.rms_norm(&mut pass.rec, &pass.x, 0, pass.total, weight, &pass.normed);
        Ok(())
    }

    fn project_gate_up(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let parts = &self.layers[layer].gate_up;
        let width = 2 * self.config.intermediate_size;
        self.side_by_side(
            &mut pass.rec,
            parts,
            &pass.normed,
            pass.total,
            &pass.gate_up,
            width,
        );
        Ok(())
    }

    fn silu_times_up(&self, pass: &mut GpuPass) -> Result<(), GpuError> {
        let ff = self.config.intermediate_size;
        let rec = &mut pass.rec;
        rec.uniforms.push(self.ops.swiglu(
            &self.ctx,
            &mut rec.encoder,
            &pass.gate_up,
            pass.total,
            ff,
            2 * ff,
            0,
            ff,
            &pass.activated,
        ));
        Ok(())
    }

    fn add_mlp_output(&self, pass: &mut GpuPass, layer: usize) -> Result<(), GpuError> {
        let down = &self.layers[layer].down;
        self.add_product(&mut pass.rec, down, &pass.activated, pass.total, &pass.x);
        Ok(())
    }

    /// Submits the layer, then waits for the one before it.
    fn end_layer(&self, pass: &mut GpuPass) -> Result<(), GpuError> {
        let submitted = pass.rec.submit(&self.ctx);
        if let Some(previous) = pass.rec.in_flight.replace(submitted) {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(previous),
                    timeout: None,
                })
                .map_err(|e| GpuError::Device(e.to_string()))?;
        }
        Ok(())
    }

    /// Normalizes and projects the wanted rows alone when they are
    /// consecutive (one prompt's last, or all), every row otherwise.
    fn logits(&self, mut pass: GpuPass, rows: &[usize]) -> Result<Vec<f32>, GpuError> {
        let ctx = &*self.ctx;
        let contiguous = rows.windows(2).all(|w| w[1] == w[0] + 1);
        let (first, count) = if contiguous {
            (rows[0], rows.len())
        } else {
            (0, pass.total)
        };
        let vocab = self.config.vocab_size;
        let logits = ctx.buffer(
            "logits",
            (count * vocab * 4) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let rec = &mut pass.rec;
        self.rms_norm(rec, &pass.x, first, count, &self.norm, &pass.normed);
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let dense = OutputView::dense(vocab);
        let uniform = self.matmul.encode(
            ctx,
            &mut rec.encoder,
            lm_head,
            &pass.normed,
            count,
            &logits,
            dense,
        );
        rec.uniforms.push(uniform);
        rec.submit(ctx);
        let values = ctx.read_f32(&logits, count * vocab)?;
        if contiguous {
            return Ok(values);
        }
        Ok(rows
            .iter()
            .flat_map(|&row| values[row * vocab..(row + 1) * vocab].iter().copied())
            .collect())
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
