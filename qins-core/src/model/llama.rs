//! Llama family (Llama 2/3, SmolLM2, TinyLlama): separate q/k/v and
//! gate/up projections, grouped-query attention, optionally tied embeddings.

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
    let mut linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelError> {
        Ok(Linear::from_weight(w.take_matrix(
            &format!("{p}.{name}.weight"),
            rows,
            cols,
        )?))
    };
    let qkv = Qkv::Separate {
        q: linear("self_attn.q_proj", q, h)?,
        k: linear("self_attn.k_proj", kv, h)?,
        v: linear("self_attn.v_proj", kv, h)?,
    };
    let o_proj = linear("self_attn.o_proj", h, q)?;
    let gate_up = GateUp::Separate {
        gate: linear("mlp.gate_proj", ff, h)?,
        up: linear("mlp.up_proj", ff, h)?,
    };
    let down = linear("mlp.down_proj", h, ff)?;
    Ok(DecoderLayer {
        input_norm: w.take_vector(&format!("{p}.input_layernorm.weight"), h)?,
        qkv,
        o_proj,
        post_attention_norm: w.take_vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
        gate_up,
        down,
    })
}
