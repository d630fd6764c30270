//! Each op against the CPU model's own function (or, for attention, an f64
//! reference of the same formula), on shapes off the workgroup sizes.
//! Tolerances: the ops compute the CPU's f32 formulas in another order
//! (reductions) or with the GPU's exp/sqrt, so 1e-5 relative to the
//! magnitudes involved; an f16 cache rounds keys and values to 11
//! significant bits, so its reference uses the rounded values.

use qins_core::codec::{EncodeOptions, encode_matrix};
use qins_core::model::layers::{rms_norm, swiglu};
use qins_core::model::rope;
use qins_core::rng::SplitMix64;
use qins_core::weights::QinsMatrix;

use super::*;
use crate::test_gpu::gpu;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.next_normal() as f32).collect()
}

fn upload(ctx: &GpuContext, values: &[f32]) -> TrackedBuffer {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    ctx.buffer_with("test", bytemuck::cast_slice(values), usage)
        .expect("uploads")
}

fn zeros(ctx: &GpuContext, len: usize) -> TrackedBuffer {
    upload(ctx, &vec![0.0; len])
}

/// Runs what `record` encodes and reads `len` values of `out` back.
fn run(
    ctx: &GpuContext,
    out: &wgpu::Buffer,
    len: usize,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> Vec<TrackedBuffer>,
) -> Vec<f32> {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let _uniforms = record(&mut encoder);
    ctx.queue.submit([encoder.finish()]);
    ctx.read_f32(out, len).expect("reads back")
}

fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * e.abs().max(1.0),
            "{what} [{i}]: GPU {a}, CPU {e}"
        );
    }
}

#[test]
fn embedding_rows_decode_as_on_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let ops = Ops::new(ctx, KvType::F32);
    let (rows, cols) = (21, 75);
    let mut weights = random(rows * cols, 1);
    weights[5] = 0.0; // code 0
    let m = QinsMatrix::from_encoded(
        encode_matrix(&weights, rows, cols, &EncodeOptions::default()).expect("encodes"),
    );
    let table = GpuMatrix::upload(ctx, "embed", &m).expect("uploads");
    let tokens: Vec<u32> = vec![0, 20, 3, 3, 11];
    let token_buffer = ctx
        .buffer_with(
            "tokens",
            bytemuck::cast_slice(&tokens),
            wgpu::BufferUsages::STORAGE,
        )
        .expect("uploads");
    let out = zeros(ctx, tokens.len() * cols);
    let actual = run(ctx, &out, tokens.len() * cols, |e| {
        vec![ops.embed(ctx, e, &table, &token_buffer, tokens.len(), &out)]
    });
    let mut expected = vec![0.0; tokens.len() * cols];
    for (&t, row) in tokens.iter().zip(expected.chunks_mut(cols)) {
        m.decode_row(t as usize, row);
    }
    // The CPU's lookup uses the f64 table, the kernels (and the GPU) the
    // nibble product: equal within an f32 ulp or two.
    assert_close(&actual, &expected, 1e-6, "embedding");
    assert_eq!(actual[5], 0.0);
}

#[test]
fn rms_norm_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let ops = Ops::new(ctx, KvType::F32);
    let (dim, rows) = (300, 5);
    let x = random(dim * rows, 2);
    let weight = random(dim, 3);
    let (xb, wb, out) = (
        upload(ctx, &x),
        upload(ctx, &weight),
        zeros(ctx, dim * rows),
    );
    // Rows 1..4 (a model normalizes only the rows whose logits it wants).
    let actual = run(ctx, &out, dim * 3, |e| {
        vec![ops.rms_norm(ctx, e, &xb, 1, 3, &wb, dim, 1e-5, &out)]
    });
    let expected = rms_norm(&x[dim..4 * dim], &weight, 1e-5);
    assert_close(&actual, &expected, 1e-5, "rms_norm");
}

#[test]
fn swiglu_matches_the_cpu_fused_and_side_by_side() {
    let Some(ctx) = gpu() else { return };
    let ops = Ops::new(ctx, KvType::F32);
    let (n, ff) = (3, 77);
    let gate_up = random(n * 2 * ff, 4);
    let expected = swiglu(&gate_up, ff);
    let input = upload(ctx, &gate_up);
    let out = zeros(ctx, n * ff);
    let actual = run(ctx, &out, n * ff, |e| {
        vec![ops.swiglu(ctx, e, &input, n, ff, 2 * ff, 0, ff, &out)]
    });
    assert_close(&actual, &expected, 1e-5, "swiglu [gate | up]");
    // The same rows as [pad | up | gate] with 5 padding columns.
    let stride = 2 * ff + 5;
    let mut shuffled = vec![9.0f32; n * stride];
    for t in 0..n {
        let row = &gate_up[t * 2 * ff..(t + 1) * 2 * ff];
        shuffled[t * stride + 5..t * stride + 5 + ff].copy_from_slice(&row[ff..]);
        shuffled[t * stride + 5 + ff..(t + 1) * stride].copy_from_slice(&row[..ff]);
    }
    let input = upload(ctx, &shuffled);
    let actual = run(ctx, &out, n * ff, |e| {
        vec![ops.swiglu(ctx, e, &input, n, ff, stride, 5 + ff, 5, &out)]
    });
    assert_close(&actual, &expected, 1e-5, "swiglu with offsets");
}

#[test]
fn rope_rotates_q_and_k_in_place_as_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let ops = Ops::new(ctx, KvType::F32);
    let (n, heads, kv_heads, d) = (3, 4, 2, 10);
    let (q_dim, kv_dim) = (heads * d, kv_heads * d);
    let stride = q_dim + 2 * kv_dim;
    let qkv = random(n * stride, 5);
    let cos = random(n * d / 2, 6);
    let sin = random(n * d / 2, 7);
    let mut expected_q: Vec<f32> = qkv
        .chunks(stride)
        .flat_map(|r| r[..q_dim].to_vec())
        .collect();
    let mut expected_k: Vec<f32> = qkv
        .chunks(stride)
        .flat_map(|r| r[q_dim..q_dim + kv_dim].to_vec())
        .collect();
    rope::apply(&mut expected_q, heads, d, &cos, &sin);
    rope::apply(&mut expected_k, kv_heads, d, &cos, &sin);
    let table: Vec<f32> = cos.iter().chain(&sin).copied().collect();
    let (buffer, table) = (upload(ctx, &qkv), upload(ctx, &table));
    let actual = run(ctx, &buffer, n * stride, |e| {
        let q = Columns { stride, offset: 0 };
        let k = Columns {
            stride,
            offset: q_dim,
        };
        vec![
            ops.rope(ctx, e, &buffer, n, heads, d, q, &table),
            ops.rope(ctx, e, &buffer, n, kv_heads, d, k, &table),
        ]
    });
    for t in 0..n {
        let row = &actual[t * stride..(t + 1) * stride];
        let what = format!("row {t}");
        assert_close(
            &row[..q_dim],
            &expected_q[t * q_dim..(t + 1) * q_dim],
            1e-6,
            &what,
        );
        assert_close(
            &row[q_dim..q_dim + kv_dim],
            &expected_k[t * kv_dim..(t + 1) * kv_dim],
            1e-6,
            &what,
        );
        // v is untouched.
        assert_eq!(
            row[q_dim + kv_dim..],
            qkv[t * stride + q_dim + kv_dim..(t + 1) * stride]
        );
    }
}

/// f64 causal attention: query `i` (position `start + i`) over positions
/// `0..=start + i` of per-kv-head `len x d` keys and values.
fn reference_attention(
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    h: Heads,
    start: usize,
) -> Vec<f32> {
    let d = h.head_dim;
    let n = q.len() / (h.heads * d);
    let group = h.heads / h.kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0f32; q.len()];
    for i in 0..n {
        for head in 0..h.heads {
            let (k, v) = (&keys[head / group], &values[head / group]);
            let qh = &q[(i * h.heads + head) * d..][..d];
            let len = start + i + 1;
            let scores: Vec<f64> = (0..len)
                .map(|p| {
                    (0..d)
                        .map(|j| f64::from(qh[j]) * f64::from(k[p * d + j]))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for j in 0..d {
                let value: f64 = (0..len).map(|p| weights[p] * f64::from(v[p * d + j])).sum();
                out[(i * h.heads + head) * d + j] = (value / total) as f32;
            }
        }
    }
    out
}

/// Stores a prompt in two segments (the second after the first is
/// cached, like prefix reuse then a decode step), attends each, and
/// compares with the f64 reference; with an f16 cache the reference uses
/// the f16-rounded keys and values.
fn attention_case(ctx: &GpuContext, kv: KvType, h: Heads, segments: &[usize], capacity: usize) {
    let ops = Ops::new(ctx, kv);
    let d = h.head_dim;
    let (q_dim, kv_dim) = (h.heads * d, h.kv_heads * d);
    let stride = q_dim + 2 * kv_dim;
    let total: usize = segments.iter().sum();
    let qkv = random(total * stride, (total * 31 + d) as u64);
    let cache = ops.layer_cache(ctx, h, capacity);
    let round = |x: f32| match kv {
        KvType::F32 => x,
        KvType::F16 => half::f16::from_f32(x).to_f32(),
    };
    // Per kv head, every position's key and value (as cached).
    let mut keys = vec![vec![0.0f32; total * d]; h.kv_heads];
    let mut values = vec![vec![0.0f32; total * d]; h.kv_heads];
    for t in 0..total {
        for head in 0..h.kv_heads {
            for j in 0..d {
                keys[head][t * d + j] = round(qkv[t * stride + q_dim + head * d + j]);
                values[head][t * d + j] = round(qkv[t * stride + q_dim + kv_dim + head * d + j]);
            }
        }
    }
    let mut start = 0;
    for &n in segments {
        // This segment's rows only, as the model would hand them over.
        let rows = upload(ctx, &qkv[start * stride..(start + n) * stride]);
        let out = zeros(ctx, n * q_dim);
        let slot = CacheSlot { start, capacity };
        let actual = run(ctx, &out, n * q_dim, |e| {
            vec![
                ops.kv_store(
                    ctx,
                    e,
                    &rows,
                    0,
                    n,
                    stride,
                    q_dim,
                    q_dim + kv_dim,
                    h,
                    &cache,
                    slot,
                ),
                ops.attention(
                    ctx,
                    e,
                    &rows,
                    0,
                    n,
                    Columns { stride, offset: 0 },
                    h,
                    &cache,
                    slot,
                    &out,
                ),
            ]
        });
        let q: Vec<f32> = qkv[start * stride..(start + n) * stride]
            .chunks(stride)
            .flat_map(|r| r[..q_dim].to_vec())
            .collect();
        let prefix = |planes: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            planes
                .iter()
                .map(|p| p[..(start + n) * d].to_vec())
                .collect()
        };
        let expected = reference_attention(&q, &prefix(&keys), &prefix(&values), h, start);
        let what = format!("{kv:?} {h:?} segment at {start} of {n}");
        assert_close(&actual, &expected, 1e-5, &what);
        start += n;
    }
}

#[test]
fn attention_over_the_gpu_cache_matches_the_reference() {
    let Some(ctx) = gpu() else { return };
    let kinds: &[KvType] = if ctx.has_shader_f16() {
        &KvType::ALL
    } else {
        eprintln!("note: this GPU has no shader-f16; the f16 cache is not tested here");
        &[KvType::F32]
    };
    for &kv in kinds {
        // Plain heads; grouped with a head_dim off the lane count and a
        // prompt longer than a block of 64 positions; Phi-3.5's head_dim.
        attention_case(
            ctx,
            kv,
            Heads {
                heads: 2,
                kv_heads: 2,
                head_dim: 8,
            },
            &[1, 1],
            4,
        );
        attention_case(
            ctx,
            kv,
            Heads {
                heads: 6,
                kv_heads: 2,
                head_dim: 20,
            },
            &[70, 1, 3],
            80,
        );
        attention_case(
            ctx,
            kv,
            Heads {
                heads: 4,
                kv_heads: 4,
                head_dim: 96,
            },
            &[5, 1],
            9,
        );
    }
}

#[test]
fn kv_store_lays_entries_out_as_the_cpu_cache() {
    let Some(ctx) = gpu() else { return };
    let ops = Ops::new(ctx, KvType::F32);
    let h = Heads {
        heads: 2,
        kv_heads: 2,
        head_dim: 3,
    };
    let (n, capacity, start) = (2, 5, 1);
    // Rows of 14: k at columns 2..8, v at 8..14.
    let stride = 14;
    let qkv: Vec<f32> = (0..n * stride).map(|i| i as f32).collect();
    let rows = upload(ctx, &qkv);
    let cache = ops.layer_cache(ctx, h, capacity);
    let slot = CacheSlot { start, capacity };
    let keys = run(ctx, &cache.keys, 2 * capacity * 3, |e| {
        vec![ops.kv_store(ctx, e, &rows, 0, n, stride, 2, 8, h, &cache, slot)]
    });
    let values = ctx
        .read_f32(&cache.values, 2 * capacity * 3)
        .expect("reads");
    for head in 0..2 {
        for t in 0..n {
            for j in 0..3 {
                let dst = (head * capacity + start + t) * 3 + j;
                assert_eq!(keys[dst], qkv[t * stride + 2 + head * 3 + j]);
                assert_eq!(values[dst], qkv[t * stride + 8 + head * 3 + j]);
            }
        }
        // Position 0 and those after the new tokens stay empty.
        assert_eq!(keys[head * capacity * 3], 0.0);
    }
}
