//! A read-only view of a loaded model, for backends that run the same
//! layers elsewhere (the GPU, `qins-gpu`): the architecture files map a
//! checkpoint's tensors onto the decoder block once, here and for every
//! device.
//!
//! A layer's projections are given as the matrices whose outputs, side by
//! side, form the product the block uses: one fused `qkv_proj` (phi3) or
//! q, k, v (llama) for `[q | k | v]`; one `gate_up_proj` or gate, up for
//! `[gate | up]`.

use super::layers::Linear;
use super::rope::Rope;
use super::{GateUp, Model, Qkv};

/// One decoder layer's weights.
pub struct LayerView<'a> {
    pub input_norm: &'a [f32],
    /// Outputs side by side: `[q | k | v]`.
    pub qkv: Vec<&'a Linear>,
    pub o_proj: &'a Linear,
    pub post_attention_norm: &'a [f32],
    /// Outputs side by side: `[gate | up]`.
    pub gate_up: Vec<&'a Linear>,
    pub down: &'a Linear,
}

impl LayerView<'_> {
    /// Every matrix of the layer, in the order of the block.
    pub fn matrices(&self) -> impl Iterator<Item = &Linear> {
        let products = self.qkv.iter().chain([&self.o_proj]);
        let products = products.chain(&self.gate_up).chain([&self.down]);
        products.copied()
    }
}

impl Model {
    pub fn layer_views(&self) -> Vec<LayerView<'_>> {
        self.layers
            .iter()
            .map(|layer| LayerView {
                input_norm: &layer.input_norm,
                qkv: match &layer.qkv {
                    Qkv::Fused(w) => vec![w],
                    Qkv::Separate { q, k, v } => vec![q, k, v],
                },
                o_proj: &layer.o_proj,
                post_attention_norm: &layer.post_attention_norm,
                gate_up: match &layer.gate_up {
                    GateUp::Fused(w) => vec![w],
                    GateUp::Separate { gate, up } => vec![gate, up],
                },
                down: &layer.down,
            })
            .collect()
    }

    pub fn embedding(&self) -> &Linear {
        &self.embed
    }

    pub fn final_norm(&self) -> &[f32] {
        &self.norm
    }

    /// The output projection (the embedding itself when they are tied).
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }
}
