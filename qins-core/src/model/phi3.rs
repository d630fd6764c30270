//! Phi-3 / Phi-3.5: fused `qkv_proj` (rows q | k | v) and `gate_up_proj`
//! (rows gate | up), longrope (handled by `rope.rs`), untied `lm_head`.

use super::layers::Linear;
use super::{DecoderLayer, GateUp, ModelConfig, ModelError, Qkv};
use crate::weights::ResidentWeights;

pub(super) fn load_layer(
    w: &mut ResidentWeights,
    c: &ModelConfig,
    i: usize,
) -> Result<DecoderLayer, ModelError> {
    let p = format!("model.layers.{i}");
    let (h, ff) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    Ok(DecoderLayer {
        input_norm: w.take_vector(&format!("{p}.input_layernorm.weight"), h)?,
        qkv: Qkv::Fused(Linear::from_weight(w.take_matrix(
            &format!("{p}.self_attn.qkv_proj.weight"),
            q + 2 * kv,
            h,
        )?)),
        o_proj: Linear::from_weight(w.take_matrix(
            &format!("{p}.self_attn.o_proj.weight"),
            h,
            q,
        )?),
        post_attention_norm: w.take_vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
        gate_up: GateUp::Fused(Linear::from_weight(w.take_matrix(
            &format!("{p}.mlp.gate_up_proj.weight"),
            2 * ff,
            h,
        )?)),
        down: Linear::from_weight(w.take_matrix(&format!("{p}.mlp.down_proj.weight"), h, ff)?),
    })
}
