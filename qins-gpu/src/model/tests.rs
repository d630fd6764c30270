//! The GPU forward pass against the CPU model on the tiny fixtures: phi3
//! (longrope, prompts on both sides of its original context of 32) and
//! llama (GQA, tied embeddings).
//!
//! The CPU runs the f32 scalar kernel with an f32 cache; the GPU decodes
//! the same weights to the same f32 values and differs only in summation
//! order and its exp/sqrt, so with an f32 cache it must agree within
//! `2e-5 x max |logit|` at every position checked and give the same
//! argmax (lavapipe measured 1.1e-6 on llama, 2.7e-6 on phi3). An f16
//! cache rounds keys and values to 11 significant bits: within
//! `5e-3 x max |logit|` (measured 6.1e-4 and 1.5e-3).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use qins_core::container::QinsFile;
use qins_core::kernels::KernelKind;
use qins_core::model::{Model, argmax};
use qins_test_support::convert_with_defaults;
use qins_test_support::tiny::{TinySpec, write_tiny_model};

use super::*;
use crate::test_gpu::gpu;

fn tiny_model(spec: TinySpec) -> Model {
    // Tests run in parallel, several on one architecture: a directory each.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "qins-gpu-{}-{}-{}",
        spec.arch.name(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    write_tiny_model(&dir.join("hf"), &spec).expect("writes the tiny model");
    let output = dir.join("model.qins");
    convert_with_defaults(&dir.join("hf"), &output).expect("converts");
    let file = QinsFile::open(&output).expect("opens");
    let mut model = Model::load(&file.header.config, file.load().expect("loads")).expect("model");
    let _ = std::fs::remove_dir_all(&dir);
    model.set_kernel(KernelKind::Scalar);
    model
}

/// A deterministic prompt of `len` tokens inside the vocabulary.
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

/// Compares `vocab`-wide rows; returns the largest error relative to the
/// row's largest logit.
fn compare(gpu: &[f32], cpu: &[f32], vocab: usize, tolerance: f32, what: &str) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0.0f32;
    for (row, (g, c)) in gpu.chunks(vocab).zip(cpu.chunks(vocab)).enumerate() {
        let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let error = g
            .iter()
            .zip(c)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(
            error <= tolerance,
            "{what} row {row}: max error {error} x max |logit|"
        );
        assert_eq!(argmax(g), argmax(c), "{what} row {row}: argmax");
        worst = worst.max(error);
    }
    worst
}

/// Prefill (every position), then decode steps one by one and batched
/// with a second sequence, on both devices.
fn check_model(
    ctx: &Arc<GpuContext>,
    model: &Model,
    kv: KvType,
    prompts: &[usize],
    tolerance: f32,
) {
    let name = model.config().architecture.name();
    let vocab = model.config().vocab_size;
    let gpu_model = GpuModel::upload(ctx.clone(), model, kv).expect("uploads");
    let no = AtomicBool::new(false);
    let mut worst = 0.0f32;
    for &len in prompts {
        let tokens = prompt(len, vocab);
        let what = format!("{name} {kv:?} prompt {len}");
        let cpu = model
            .forward_all(&tokens, &mut model.new_cache(64), &no)
            .expect("cpu");
        let mut cache = gpu_model.new_cache(64);
        let gpu = gpu_model
            .forward_all(&tokens, &mut cache, &no)
            .expect("gpu");
        assert_eq!(cache.len(), len);
        worst = worst.max(compare(&gpu, &cpu, vocab, tolerance, &what));

        // The last 3 tokens again as decode steps after the rest.
        let mut cpu_cache = model.new_cache(64);
        let mut gpu_cache = gpu_model.new_cache(64);
        model
            .forward(&tokens[..len - 3], &mut cpu_cache, &no)
            .expect("cpu");
        gpu_model
            .forward(&tokens[..len - 3], &mut gpu_cache, &no)
            .expect("gpu");
        for &t in &tokens[len - 3..] {
            let cpu = model.forward(&[t], &mut cpu_cache, &no).expect("cpu");
            let gpu = gpu_model.forward(&[t], &mut gpu_cache, &no).expect("gpu");
            worst = worst.max(compare(
                &gpu,
                &cpu,
                vocab,
                tolerance,
                &format!("{what} step"),
            ));
        }

        // A batched step of this sequence and a fresh one-token sequence.
        let mut other = gpu_model.new_cache(64);
        let batch = qins_core::model::block::forward_batch(
            &gpu_model,
            &mut [(5, &mut gpu_cache), (7, &mut other)],
            &no,
        )
        .expect("gpu batch");
        let alone = model.forward(&[5], &mut cpu_cache, &no).expect("cpu");
        let fresh = model
            .forward(&[7], &mut model.new_cache(8), &no)
            .expect("cpu");
        worst = worst.max(compare(
            &batch[0],
            &alone,
            vocab,
            tolerance,
            &format!("{what} batch[0]"),
        ));
        worst = worst.max(compare(
            &batch[1],
            &fresh,
            vocab,
            tolerance,
            &format!("{what} batch[1]"),
        ));
        assert_eq!((gpu_cache.len(), other.len()), (len + 1, 1));
    }
    eprintln!("{name} {kv:?}: GPU vs CPU logits, max error {worst:e} x max |logit|");
}

fn kv_types(ctx: &GpuContext) -> Vec<(KvType, f32)> {
    let mut kinds = vec![(KvType::F32, 2e-5)];
    if ctx.has_shader_f16() {
        kinds.push((KvType::F16, 5e-3));
    }
    kinds
}

#[test]
fn tiny_phi3_on_the_gpu_matches_the_cpu_on_both_sides_of_longrope() {
    let Some(ctx) = gpu() else { return };
    let model = tiny_model(TinySpec::phi3());
    assert!(
        model.config().rope_scaling.is_some(),
        "the tiny phi3 has longrope"
    );
    for (kv, tolerance) in kv_types(ctx) {
        // Original context 32: 20 tokens use the short factors, 48 the long.
        check_model(ctx, &model, kv, &[20, 48], tolerance);
    }
}

#[test]
fn tiny_llama_on_the_gpu_matches_the_cpu() {
    let Some(ctx) = gpu() else { return };
    let model = tiny_model(TinySpec::llama());
    for (kv, tolerance) in kv_types(ctx) {
        check_model(ctx, &model, kv, &[9, 40], tolerance);
    }
}

/// Two sequences stepping at once through `decode_step` share passes
/// (qins-core's batcher, as on the CPU) and get the logits they get alone.
#[test]
fn concurrent_decode_steps_share_gpu_passes_and_keep_their_results() {
    let Some(ctx) = gpu() else { return };
    let model = tiny_model(TinySpec::llama());
    let mut gpu_model = GpuModel::upload(ctx.clone(), &model, KvType::F32).expect("uploads");
    // A window far longer than any scheduling delay (see the CPU test,
    // qins-core's concurrent_decode_steps_share_passes_and_keep_their_results).
    gpu_model.batcher = DecodeBatcher::with_window(std::time::Duration::from_secs(2));
    let vocab = model.config().vocab_size;
    let no = AtomicBool::new(false);
    let prompts: [&[u32]; 2] = [&[3, 1, 4, 1, 5], &[2, 7, 1, 8]];
    let steps = 6;
    let greedy = |step: &dyn Fn(u32, &mut GpuCache) -> Vec<f32>, prompt: &[u32]| {
        let mut cache = gpu_model.new_cache(32);
        let mut logits = gpu_model.forward(prompt, &mut cache, &no).expect("prompt");
        (0..steps)
            .map(|_| {
                logits = step(argmax(&logits) as u32, &mut cache);
                logits.clone()
            })
            .collect::<Vec<_>>()
    };
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|prompt| {
            greedy(
                &|t, c| gpu_model.forward(&[t], c, &no).expect("step"),
                prompt,
            )
        })
        .collect();
    let ready = std::sync::Barrier::new(prompts.len());
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let (gpu_model, no, ready, greedy) = (&gpu_model, &no, &ready, &greedy);
                scope.spawn(move || {
                    greedy(
                        &|t, c| {
                            if c.len() == prompt.len() {
                                ready.wait();
                            }
                            gpu_model.decode_step(t, c, no).expect("batched step")
                        },
                        prompt,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("joins"))
            .collect()
    });
    for (s, (a, t)) in alone.iter().zip(&together).enumerate() {
        for (step, (a, t)) in a.iter().zip(t).enumerate() {
            compare(t, a, vocab, 2e-5, &format!("sequence {s} step {step}"));
        }
    }
    let (passes, served) = gpu_model.decode_pass_counts();
    assert_eq!(served, 2 * steps as u64);
    assert!(
        passes <= steps as u64 + 2,
        "{passes} passes for {served} steps"
    );
    eprintln!("GPU: {served} steps in {passes} passes");
}
