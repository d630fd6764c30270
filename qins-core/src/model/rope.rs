//! Rotary position embeddings, as Hugging Face transformers computes them.
//!
//! Default rope: `inv_freq[i] = 1 / base^(2i/d)`. Phi-3.5's longrope divides
//! each frequency by a per-dimension factor (`short_factor` while the sequence
//! fits the original context, `long_factor` beyond it, chosen per forward call
//! from the sequence length `max(position) + 1`) and scales cos and sin by an
//! attention factor `sqrt(1 + ln(scale) / ln(original_max))`.

use crate::container::config::{LongRope, ModelConfig};

#[derive(Clone, Debug)]
pub struct Rope {
    head_dim: usize,
    default_inv_freq: Vec<f64>,
    longrope: Option<LongRopeTables>,
}

#[derive(Clone, Debug)]
struct LongRopeTables {
    short_inv_freq: Vec<f64>,
    long_inv_freq: Vec<f64>,
    original_max: usize,
    attention_factor: f64,
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let d = config.head_dim;
        let base_inv_freq: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        let longrope = config
            .rope_scaling
            .as_ref()
            .map(|rope| LongRopeTables::new(rope, &base_inv_freq, config.max_position_embeddings));
        Self {
            head_dim: d,
            default_inv_freq: base_inv_freq,
            longrope,
        }
    }

    /// cos and sin tables (`positions.len() x head_dim/2`) for a forward
    /// call whose sequence length is `seq_len`.
    pub fn tables(
        &self,
        positions: std::ops::Range<usize>,
        seq_len: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (inv_freq, scale) = match &self.longrope {
            None => (&self.default_inv_freq, 1.0),
            Some(l) if seq_len > l.original_max => (&l.long_inv_freq, l.attention_factor),
            Some(l) => (&l.short_inv_freq, l.attention_factor),
        };
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for p in positions {
            for &f in inv_freq {
                // transformers computes the angle in f32 (inv_freq is f32 there).
                let angle = (p as f32) * (f as f32);
                cos.push(angle.cos() * scale as f32);
                sin.push(angle.sin() * scale as f32);
            }
        }
        (cos, sin)
    }
}

impl LongRopeTables {
    fn new(rope: &LongRope, base_inv_freq: &[f64], max_position_embeddings: usize) -> Self {
        let divide = |factors: &[f64]| -> Vec<f64> {
            base_inv_freq
                .iter()
                .zip(factors)
                .map(|(f, factor)| f / factor)
                .collect()
        };
        let scale = max_position_embeddings as f64 / rope.original_max_position_embeddings as f64;
        let attention_factor = rope.attention_factor.unwrap_or(if scale <= 1.0 {
            1.0
        } else {
            (1.0 + scale.ln() / (rope.original_max_position_embeddings as f64).ln()).sqrt()
        });
        Self {
            short_inv_freq: divide(&rope.short_factor),
            long_inv_freq: divide(&rope.long_factor),
            original_max: rope.original_max_position_embeddings,
            attention_factor,
        }
    }
}

/// Rotates `x` (`tokens x heads x head_dim`) in place, NeoX style: the first
/// half of each head pairs with the second half (`rotate_half`).
pub fn apply(x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for (t, token) in x.chunks_mut(heads * head_dim).enumerate() {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in token.chunks_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}
