//! Both shaders against the CPU scalar reference kernel.
//!
//! The shaders decode every weight to the same f32 as the CPU (the nibble
//! product of the same tables), so outputs differ only in the order the
//! products are summed: the tolerance is `1e-5 x Σ|w x|` per output, the
//! bound the CPU kernels are held to against each other.

use qins_core::codec::{EncodeOptions, Granularity, encode_matrix};
use qins_core::kernels::{KernelKind, qins_matmul_with};
use qins_core::rng::SplitMix64;
use qins_core::weights::QinsMatrix;

use super::*;
use crate::test_gpu::gpu;

/// Gaussian weights, ~5% exact zeros (code 0, at least one), rows of two
/// scales.
fn random_matrix(rows: usize, cols: usize, granularity: Granularity, seed: u64) -> QinsMatrix {
    let mut rng = SplitMix64::new(seed);
    let weights: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let scale = if (i / cols).is_multiple_of(3) {
                10.0
            } else {
                0.05
            };
            // One zero in every matrix, wherever the draws put the others.
            if rng.next_f64() < 0.05 || i == rows * cols / 2 {
                0.0
            } else {
                (rng.next_normal() * scale) as f32
            }
        })
        .collect();
    let options = EncodeOptions {
        granularity,
        ..EncodeOptions::default()
    };
    QinsMatrix::from_encoded(encode_matrix(&weights, rows, cols, &options).expect("encodes"))
}

fn random_inputs(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.next_normal() as f32).collect()
}

/// Σ|w x| per output, from the decoded matrix.
fn magnitudes(w: &QinsMatrix, x: &[f32], n: usize) -> Vec<f64> {
    let decoded = w.decode();
    let mut out = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            out[t * w.rows + r] = (0..w.cols)
                .map(|c| f64::from(decoded[r * w.cols + c] * x[t * w.cols + c]).abs())
                .sum();
        }
    }
    out
}

fn check(ctx: &GpuContext, kernels: &QinsMatmul, w: &QinsMatrix, n: usize, seed: u64) {
    let what = format!("{}x{} n={n}", w.rows, w.cols);
    assert!(
        w.codes().contains(&0),
        "{what}: the test wants code 0 present"
    );
    let x = random_inputs(n * w.cols, seed);
    let mut expected = vec![0.0f32; n * w.rows];
    qins_matmul_with(KernelKind::Scalar, &x, n, w, &mut expected);
    let gpu_matrix = GpuMatrix::upload(ctx, "test", w).expect("uploads");
    let actual = kernels.run(ctx, &gpu_matrix, &x, n).expect("runs");
    let bound = magnitudes(w, &x, n);
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, ((a, e), b)) in actual.iter().zip(&expected).zip(&bound).enumerate() {
        let err = f64::from((a - e).abs());
        assert!(
            err <= 1e-5 * b + 1e-30,
            "{what}: out[{i}] = {a}, CPU {e} (error {err:e}, bound {:e})",
            1e-5 * b
        );
    }
}

#[test]
fn both_shaders_match_the_cpu_reference_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let kernels = QinsMatmul::new(ctx);
    // Rows and columns off the workgroup (128), tile (32) and word (4)
    // sizes; input rows on both sides of the matvec/matmul switch (4) and
    // of the tile (32).
    let shapes = [(1, 1), (3, 7), (33, 100), (130, 257), (65, 300)];
    let mut seed = 1;
    for granularity in [Granularity::PerRow, Granularity::PerTensor] {
        for &(rows, cols) in &shapes {
            let w = random_matrix(rows, cols, granularity, seed);
            for n in [1, 2, 4, 5, 33, 70] {
                seed += 1;
                check(ctx, &kernels, &w, n, seed);
            }
        }
    }
}

#[test]
fn a_product_can_fill_columns_of_a_wider_buffer_and_add_to_them() {
    let Some(ctx) = gpu() else { return };
    let kernels = QinsMatmul::new(ctx);
    let (rows, cols, stride, offset) = (37, 45, 50, 9);
    let w = random_matrix(rows, cols, Granularity::PerRow, 99);
    let gpu_matrix = GpuMatrix::upload(ctx, "test", &w).expect("uploads");
    for n in [3, 40] {
        let x = random_inputs(n * cols, 7);
        let mut product = vec![0.0f32; n * rows];
        qins_matmul_with(KernelKind::Scalar, &x, n, &w, &mut product);
        let bound = magnitudes(&w, &x, n);
        let before: Vec<f32> = (0..n * stride).map(|i| i as f32 * 0.5).collect();
        let storage = wgpu::BufferUsages::STORAGE;
        let input = ctx
            .buffer_with("x", bytemuck::cast_slice(&x), storage)
            .expect("uploads");
        let output = ctx
            .buffer_with(
                "out",
                bytemuck::cast_slice(&before),
                storage | wgpu::BufferUsages::COPY_SRC,
            )
            .expect("uploads");
        let view = OutputView {
            stride,
            offset,
            accumulate: true,
        };
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let _uniform = kernels.encode(ctx, &mut encoder, &gpu_matrix, &input, n, &output, view);
        ctx.queue.submit([encoder.finish()]);
        let after = ctx.read_f32(&output, n * stride).expect("reads back");
        for t in 0..n {
            for c in 0..stride {
                let i = t * stride + c;
                if (offset..offset + rows).contains(&c) {
                    let expected = before[i] + product[t * rows + c - offset];
                    let tolerance = 1e-5 * (bound[t * rows + c - offset] + f64::from(before[i]));
                    assert!(
                        f64::from((after[i] - expected).abs()) <= tolerance,
                        "n={n} ({t}, {c}): {} vs {expected}",
                        after[i]
                    );
                } else {
                    assert_eq!(after[i], before[i], "n={n} ({t}, {c}) outside the view");
                }
            }
        }
    }
}
