//! Causal self-attention over the preallocated K/V cache.
//!
//! One new token (decode) reads the cached keys and values in place: a
//! dot product per position, a softmax and a weighted sum per head, split
//! across heads. Several new tokens (prefill) go through blocked matrix
//! products per head ([`super::gemm`]), where gathering a head's queries is
//! small next to the work.

use rayon::prelude::*;

use super::ModelError;
use super::gemm::{Rhs, matmul};
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
    {
        use crate::kernels::dispatch::{Isa, allows};
        if allows(Isa::Avx512) && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { attend_avx512(q, keys, values, scale, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { attend_avx2(q, keys, values, scale, out) };
        }
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

/// [`attend_portable`] compiled for AVX2 (x86-64 without AVX-512): 256-bit
/// registers instead of baseline SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2<E: Entry>(q: &[f32], keys: &[E], values: &[E], scale: f32, out: &mut [f32]) {
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
    let scale = 1.0 / (head_dim as f32).sqrt();
    let row = heads * head_dim;
    let mut out = vec![0.0f32; n * row];
    let mut q_head = vec![0.0f32; n * head_dim];
    let mut scores = vec![0.0f32; n * len];
    let mut out_head = vec![0.0f32; n * head_dim];
    for kv_head in 0..kv_heads {
        let (k, v) = kv(kv_head);
        for head in kv_head * group..(kv_head + 1) * group {
            let columns = head * head_dim..(head + 1) * head_dim;
            for (dst, src) in q_head.chunks_mut(head_dim).zip(q.chunks(row)) {
                dst.copy_from_slice(&src[columns.clone()]);
            }
            matmul(
                &q_head,
                n,
                head_dim,
                Rhs::Transposed(&k),
                len,
                scale,
                &mut scores,
            );
            causal_softmax(&mut scores, len, start);
            matmul(
                &scores,
                n,
                len,
                Rhs::Plain(&v),
                head_dim,
                1.0,
                &mut out_head,
            );
            for (dst, src) in out.chunks_mut(row).zip(out_head.chunks(head_dim)) {
                dst[columns.clone()].copy_from_slice(src);
            }
        }
    }
    Ok(out)
}

/// Softmax of each row of `scores` (`n x len`) over the positions query `i`
/// (at position `start + i`) may see, `0..=start + i`; later positions get 0.
fn causal_softmax(scores: &mut [f32], len: usize, start: usize) {
    scores.par_chunks_mut(len).enumerate().for_each(|(i, row)| {
        let (seen, future) = row.split_at_mut(start + i + 1);
        let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in seen.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        seen.iter_mut().for_each(|s| *s /= sum);
        future.fill(0.0);
    });
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

    /// Prefill of `n` tokens after `start` cached ones equals attending one
    /// token at a time over its own prefix; shapes large enough for the
    /// products to run on several threads.
    #[test]
    fn prefill_equals_one_token_at_a_time() {
        let mut rng = SplitMix64::new(5);
        for (heads, kv_heads, d, start, n) in [
            (4, 2, 8, 0, 5),
            (6, 3, 20, 7, 9),
            (9, 3, 64, 0, 120),
            (4, 4, 96, 50, 300),
        ] {
            let len = start + n;
            let q = random(n * heads * d, &mut rng);
            let keys: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(len * d, &mut rng)).collect();
            let values: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(len * d, &mut rng)).collect();
            let prefill = attention(&q, heads, d, kv_heads, start, |h| {
                (keys[h].clone(), values[h].clone())
            })
            .unwrap();
            for i in 0..n {
                let seen = (start + i + 1) * d;
                let one = attention_one(
                    &q[i * heads * d..(i + 1) * heads * d],
                    heads,
                    d,
                    kv_heads,
                    |h| HeadView::F32 {
                        keys: &keys[h][..seen],
                        values: &values[h][..seen],
                    },
                );
                assert_close(
                    &prefill[i * heads * d..(i + 1) * heads * d],
                    &one,
                    &format!("{heads}/{kv_heads} d {d} start {start} token {i}"),
                );
            }
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
