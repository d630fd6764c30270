//! The real SmolLM2-135M-Instruct, converted from its GGUF, answers a
//! greedy question through the bare model (no engine): the model layer's
//! end-to-end check on real weights.
//!
//! The conversion is made once per test binary. `QINS_TEST_SMOLLM2_QINS`
//! names a file converted beforehand instead: the aarch64 run under qemu
//! (`scripts/test-aarch64.sh`) passes the host's conversion, since the file
//! format is the same everywhere and emulated conversion takes minutes.

use qins_core::model::Decoder;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use qins_core::container::QinsFile;
use qins_core::model::{Model, argmax};
use qins_test_support::convert_with_defaults;
use qins_test_support::paths::{require, smollm2_gguf};

/// SmolLM2 as .qins: the file named by `QINS_TEST_SMOLLM2_QINS`, or the
/// fixture GGUF converted once for this test binary.
fn smollm2_qins() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("QINS_TEST_SMOLLM2_QINS") {
            return require(PathBuf::from(path));
        }
        let gguf = require(smollm2_gguf());
        // One fixed name under the target's scratch directory: each run
        // replaces the last (atomically), nothing piles up in /tmp.
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-model-test.qins");
        convert_with_defaults(&gguf, &path).unwrap();
        path
    })
}

#[test]
fn smollm2_greedily_names_the_capital_of_france() {
    let file = QinsFile::open(smollm2_qins()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_str(&file.header.tokenizer_json).unwrap();
    let model = Model::load(&file.header.config, file.load().unwrap()).unwrap();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let mut tokens = tokenizer.encode(prompt, true).unwrap().get_ids().to_vec();
    let end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let mut cache = model.new_cache(256);
    let no = AtomicBool::new(false);
    let mut reply = Vec::new();
    let mut logits = model.forward(&tokens, &mut cache, &no).unwrap();
    for _ in 0..24 {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        if next == end {
            break;
        }
        reply.push(next);
        tokens.push(next);
        logits = model.forward(&[next], &mut cache, &no).unwrap();
    }
    let text = tokenizer.decode(&reply, true).unwrap();
    assert!(text.contains("Paris"), "reply: {text:?}");
}

/// Prefill of a real prompt (long enough for blocked matrix products)
/// agrees with feeding it one token at a time. Not to the last digit: the
/// prefill kernel rounds activations to bf16, which moves SmolLM2's logits by
/// up to ~0.2 (measured: 0.09 with candle's attention, 0.15 with gemm's);
/// a wrong attention or product moves them by whole units.
#[test]
fn smollm2_prefill_equals_token_by_token() {
    let file = QinsFile::open(smollm2_qins()).unwrap();
    let model = Model::load(&file.header.config, file.load().unwrap()).unwrap();
    let tokens: Vec<u32> = (0..40u32).map(|i| 100 + i * 37).collect();
    let no = AtomicBool::new(false);
    let mut cache = model.new_cache(64);
    let prefill = model.forward(&tokens, &mut cache, &no).unwrap();
    let mut cache = model.new_cache(64);
    let mut stepped = Vec::new();
    for &t in &tokens {
        stepped = model.forward(&[t], &mut cache, &no).unwrap();
    }
    let worst = prefill
        .iter()
        .zip(&stepped)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.5, "largest logit difference {worst}");
    assert_eq!(argmax(&prefill), argmax(&stepped));
}
