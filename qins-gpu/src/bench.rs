//! Prefill and decode speed of a model on the GPU, and the weight traffic
//! that bounds decode: the GPU half of `qinsd bench` (`qinsd bench
//! --device gpu MODEL`; `examples/gpu_bench.rs` runs it without the daemon,
//! with a choice of cache type).
//!
//! A decode step reads every matrix's codes, sign bits and tables once
//! (the embedding is one row per token), so `bytes/token x tokens/s` is
//! the bandwidth decode sustains, to compare with the card's.

use qins_core::model::Decoder;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use qins_core::model::{Model, argmax};
use qins_core::rng::SplitMix64;

use crate::GpuError;
use crate::device::{GpuContext, backend_name};
use crate::model::GpuModel;
use crate::shaders::KvType;

#[derive(Clone, Debug)]
pub struct GpuBenchReport {
    pub adapter: String,
    pub backend: &'static str,
    pub kv: KvType,
    pub upload_s: f64,
    /// Bytes qins holds on the GPU after the run (weights and the cache).
    pub gpu_bytes: u64,
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_steps: usize,
    pub decode_tok_s: f64,
    pub weight_bytes_per_token: u64,
    /// weight_bytes_per_token x decode_tok_s.
    pub effective_gb_s: f64,
}

impl std::fmt::Display for GpuBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "device        {} ({})", self.adapter, self.backend)?;
        writeln!(f, "kv cache      {:?}", self.kv)?;
        writeln!(f, "upload        {:.2} s", self.upload_s)?;
        writeln!(f, "gpu memory    {:.1} MB", self.gpu_bytes as f64 / 1e6)?;
        writeln!(
            f,
            "prefill       {:.1} tok/s ({} tokens)",
            self.prefill_tok_s, self.prompt_tokens
        )?;
        writeln!(
            f,
            "decode        {:.2} tok/s ({} steps)",
            self.decode_tok_s, self.decode_steps
        )?;
        writeln!(
            f,
            "weights/token {:.1} MB",
            self.weight_bytes_per_token as f64 / 1e6
        )?;
        write!(f, "effective     {:.2} GB/s", self.effective_gb_s)
    }
}

/// Uploads `model` to `ctx`, prefills `prompt` random tokens, then runs
/// `decode` greedy steps.
pub fn bench(
    ctx: Arc<GpuContext>,
    model: &Model,
    kv: KvType,
    prompt: usize,
    decode: usize,
    seed: u64,
) -> Result<GpuBenchReport, GpuError> {
    let started = Instant::now();
    let gpu_model = GpuModel::upload(ctx.clone(), model, kv)?;
    ctx.wait()?;
    let upload_s = started.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(seed);
    let tokens: Vec<u32> = (0..prompt.max(1))
        .map(|_| (rng.next_f64() * vocab as f64) as u32 % vocab as u32)
        .collect();
    let no = AtomicBool::new(false);
    let mut cache = gpu_model.new_cache(tokens.len() + decode);
    let started = Instant::now();
    let mut logits = gpu_model.forward(&tokens, &mut cache, &no)?;
    let prefill_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..decode {
        logits = gpu_model.forward(&[argmax(&logits) as u32], &mut cache, &no)?;
    }
    let decode_s = started.elapsed().as_secs_f64();
    let decode_tok_s = decode as f64 / decode_s.max(f64::MIN_POSITIVE);
    let bytes = gpu_model.decode_weight_bytes();
    Ok(GpuBenchReport {
        adapter: ctx.adapter().name.clone(),
        backend: backend_name(ctx.adapter().backend),
        kv,
        upload_s,
        gpu_bytes: ctx.allocated_bytes(),
        prompt_tokens: tokens.len(),
        prefill_tok_s: tokens.len() as f64 / prefill_s.max(f64::MIN_POSITIVE),
        decode_steps: decode,
        decode_tok_s,
        weight_bytes_per_token: bytes,
        effective_gb_s: bytes as f64 * decode_tok_s / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_gpu::gpu;
    use qins_core::codec::sign_row_bytes;
    use qins_core::container::QinsFile;
    use qins_test_support::convert_with_defaults;
    use qins_test_support::tiny::{TinySpec, write_tiny_model};

    #[test]
    fn bench_runs_on_the_tiny_model_and_counts_every_matrix_but_the_embedding() {
        let Some(ctx) = gpu() else { return };
        let dir = std::env::temp_dir().join(format!("qins-gpu-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_tiny_model(&dir.join("hf"), &TinySpec::phi3()).expect("writes");
        convert_with_defaults(&dir.join("hf"), &dir.join("m.qins")).expect("converts");
        let file = QinsFile::open(&dir.join("m.qins")).expect("opens");
        let model = Model::load(&file.header.config, file.load().expect("loads")).expect("model");
        let _ = std::fs::remove_dir_all(&dir);
        let report = bench(ctx.clone(), &model, KvType::F32, 8, 3, 1).expect("bench");
        assert_eq!((report.prompt_tokens, report.decode_steps), (8, 3));
        assert!(report.prefill_tok_s > 0.0 && report.decode_tok_s > 0.0);
        let c = model.config();
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let rows_and_cols = [
            (q + 2 * kv, c.hidden_size),
            (c.hidden_size, q),
            (2 * c.intermediate_size, c.hidden_size),
            (c.hidden_size, c.intermediate_size),
        ];
        // Codes and sign bits as stored, as the CPU counts them: the GPU's
        // row padding and tables are in `gpu_bytes`, not in what a step reads.
        let matrix = |rows: usize, cols: usize| (rows * (cols + sign_row_bytes(cols))) as u64;
        let per_layer: u64 = rows_and_cols.iter().map(|&(r, k)| matrix(r, k)).sum();
        let expected = c.num_hidden_layers as u64 * per_layer + matrix(c.vocab_size, c.hidden_size);
        assert_eq!(report.weight_bytes_per_token, expected);
        assert_eq!(model.decode_weight_bytes(), expected, "the CPU's count");
        assert!(report.gpu_bytes > expected);
        assert!(report.to_string().contains("tok/s"));
    }
}
