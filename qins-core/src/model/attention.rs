//! Causal self-attention over the preallocated K/V cache.
//!
//! One new token (decode) reads the cached keys and values in place: a
//! dot product per position, a softmax and a weighted sum per head, split
//! across heads. Several new tokens (prefill) go through candle's matmuls
//! per kv head, where the copies into tensors are small next to the work.

use candle_core::{D, Device, Tensor};
use rayon::prelude::*;

use super::ModelError;
use super::kv_cache::HeadView;
use crate::kernels::widen_bf16;

/// Attention of one query token (`heads x head_dim`) over the `len` cached
/// positions of every kv head, `kv(kv_head)` giving its keys and values,
/// each `len x head_dim`. Returns `heads x head_dim`.
pub fn attention_one<'a>(
    q: &[f32],
    heads: usize,
    head_dim: usize,
    kv_heads: usize,
    kv: impl Fn(usize) -> HeadView<'a> + Sync,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0.0f32; heads * head_dim];
    out.par_chunks_mut(head_dim)
        .zip(q.par_chunks(head_dim))
        .enumerate()
        .for_each(|(head, (out, q))| match kv(head / group) {
            HeadView::F32 { keys, values } => attend(q, keys, values, scale, out),
            HeadView::Bf16 { keys, values } => attend(q, keys, values, scale, out),
        });
    out
}

/// A cached key or value entry.
trait Entry: Copy {
    fn widen(self) -> f32;
}

impl Entry for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

/// bf16 bits.
impl Entry for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        widen_bf16(self)
    }
}

/// One head: `out = Σ_j softmax(q·k_j * scale) v_j`.
fn attend<E: Entry>(q: &[f32], keys: &[E], values: &[E], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { attend_avx512(q, keys, values, scale, out) };
    }
    attend_portable(q, keys, values, scale, out);
}

/// [`attend_portable`] compiled for AVX-512: the fixed-width lane arrays of
/// [`dot`] and [`add_scaled`] become 512-bit registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512<E: Entry>(q: &[f32], keys: &[E], values: &[E], scale: f32, out: &mut [f32]) {
    attend_portable(q, keys, values, scale, out);
}

#[inline(always)]
fn attend_portable<E: Entry>(q: &[f32], keys: &[E], values: &[E], scale: f32, out: &mut [f32]) {
    let d = q.len();
    let mut scores: Vec<f32> = keys.chunks_exact(d).map(|k| dot(q, k) * scale).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    for (&p, v) in scores.iter().zip(values.chunks_exact(d)) {
        add_scaled(out, v, p / total);
    }
}

/// Lanes of the partial sums in [`dot`]: one AVX-512 register.
const LANES: usize = 16;

#[inline(always)]
fn dot<E: Entry>(a: &[f32], b: &[E]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, a_tail) = a.as_chunks::<LANES>();
    let (b_chunks, b_tail) = b.as_chunks::<LANES>();
    for (a, b) in a_chunks.iter().zip(b_chunks) {
        for i in 0..LANES {
            lanes[i] += a[i] * b[i].widen();
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y.widen()).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `out += v * p`.
#[inline(always)]
fn add_scaled<E: Entry>(out: &mut [f32], v: &[E], p: f32) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += x.widen() * p;
    }
}

/// Causal attention of `n` new query tokens (`n x heads x head_dim`) at
/// positions `start..start + n` over `len = start + n` cached keys/values
/// per kv head. Returns `n x heads x head_dim`.
pub fn attention(
    q: &[f32],
    heads: usize,
    head_dim: usize,
    kv_heads: usize,
    start: usize,
    kv: impl Fn(usize) -> (Vec<f32>, Vec<f32>),
) -> Result<Vec<f32>, ModelError> {
    let n = q.len() / (heads * head_dim);
    let len = start + n;
    let group = heads / kv_heads;
    let device = Device::Cpu;
    // queries as heads x n x head_dim
    let q = Tensor::from_slice(q, (n, heads, head_dim), &device)?
        .transpose(0, 1)?
        .contiguous()?;
    let mask = causal_mask(n, start, &device)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(kv_heads);
    for kv_head in 0..kv_heads {
        let (k, v) = kv(kv_head);
        let k = Tensor::from_vec(k, (len, head_dim), &device)?;
        let v = Tensor::from_vec(v, (len, head_dim), &device)?;
        let q_group = q
            .narrow(0, kv_head * group, group)?
            .reshape((group * n, head_dim))?;
        let scores = (q_group.matmul(&k.t()?)? * scale)?.reshape((group, n, len))?;
        let scores = scores.broadcast_add(&mask)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
        let out = probs
            .reshape((group * n, len))?
            .matmul(&v)?
            .reshape((group, n, head_dim))?;
        outputs.push(out);
    }
    // heads x n x head_dim -> n x heads x head_dim
    let out = Tensor::cat(&outputs, 0)?.transpose(0, 1)?.contiguous()?;
    Ok(out.flatten_all()?.to_vec1::<f32>()?)
}

/// `n x (start + n)`: 0 where query `i` (at position `start + i`) may attend, -inf after.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor, ModelError> {
    let len = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (n, len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::round_to_bf16;
    use crate::rng::SplitMix64;

    fn random(len: usize, rng: &mut SplitMix64) -> Vec<f32> {
        (0..len).map(|_| rng.next_normal() as f32).collect()
    }

    #[test]
    fn one_token_attention_equals_the_general_path() {
        let mut rng = SplitMix64::new(3);
        // (heads, kv_heads, head_dim, cached positions): plain, grouped,
        // a head_dim off the lane width, Phi-3.5's head_dim.
        for (heads, kv_heads, d, len) in
            [(4, 4, 8, 1), (8, 2, 16, 37), (6, 3, 20, 9), (4, 4, 96, 130)]
        {
            let q = random(heads * d, &mut rng);
            let keys: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(len * d, &mut rng)).collect();
            let values: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(len * d, &mut rng)).collect();
            let expected = attention(&q, heads, d, kv_heads, len - 1, |h| {
                (keys[h].clone(), values[h].clone())
            })
            .unwrap();
            let actual = attention_one(&q, heads, d, kv_heads, |h| HeadView::F32 {
                keys: &keys[h][..],
                values: &values[h][..],
            });
            assert_close(
                &actual,
                &expected,
                &format!("f32 {heads}/{kv_heads} d {d} len {len}"),
            );
            // A bf16 cache: the general path on the same (widened) entries.
            let round = |v: &Vec<f32>| v.iter().map(|&x| round_to_bf16(x)).collect::<Vec<u16>>();
            let (keys16, values16): (Vec<_>, Vec<_>) = keys
                .iter()
                .zip(&values)
                .map(|(k, v)| (round(k), round(v)))
                .unzip();
            let view = |h: usize| HeadView::Bf16 {
                keys: &keys16[h][..],
                values: &values16[h][..],
            };
            let expected =
                attention(&q, heads, d, kv_heads, len - 1, |h| view(h).to_f32()).unwrap();
            let actual = attention_one(&q, heads, d, kv_heads, view);
            assert_close(
                &actual,
                &expected,
                &format!("bf16 {heads}/{kv_heads} d {d} len {len}"),
            );
        }
    }

    fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{what} [{i}]: {a} vs {e}"
            );
        }
    }
}
