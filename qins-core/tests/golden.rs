//! The qins model against Hugging Face transformers.
//!
//! `tests/golden/make_golden.sh` converts the tiny models, exports the
//! decoded weights with `qinsd export-hf` and stores the logits transformers
//! computes from them. Here the same tiny models are converted and run by
//! qins: both sides use identical (QINS-decoded) weights, so the logits must
//! agree up to float rounding. The phi3 file has a prompt shorter and one
//! longer than the longrope original context.

use qins_core::model::Decoder;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use qins_core::container::QinsFile;
use qins_core::kernels::available_kernels;
use qins_core::model::{Model, argmax};
use qins_test_support::convert_with_defaults;
use qins_test_support::paths::{require, smollm2_gguf};
use qins_test_support::tiny::{TinySpec, write_tiny_model};
use serde_json::Value;

/// Allowed |qins - transformers| per logit, relative to the logits' scale,
/// for the f32 kernels.
const TOLERANCE: f32 = 5e-5;
/// The same for kernels that round weights and activations to bf16 (8
/// significant bits) in every matrix product, with their bf16 K/V cache:
/// measured 0.7% (SmolLM2) to 1.2% (tiny llama) of the scale.
const BF16_TOLERANCE: f32 = 2e-2;

struct GoldenPrompt {
    name: String,
    token_ids: Vec<u32>,
    first_logit_position: usize,
    logits: Vec<Vec<f32>>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn read_golden(file: &str) -> (Value, Vec<GoldenPrompt>) {
    let text = std::fs::read_to_string(golden_dir().join(file)).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let prompts = json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| GoldenPrompt {
            name: p["name"].as_str().unwrap().to_string(),
            token_ids: serde_json::from_value(p["token_ids"].clone()).unwrap(),
            first_logit_position: p["first_logit_position"].as_u64().unwrap() as usize,
            logits: serde_json::from_value(p["logits"].clone()).unwrap(),
        })
        .collect();
    (json, prompts)
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qins-golden-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Converts `source` with the default options (as make_golden.py does) and loads it.
fn converted_model(source: &Path, dir: &Path) -> Model {
    let output = dir.join("model.qins");
    convert_with_defaults(source, &output).unwrap();
    let file = QinsFile::open(&output).unwrap();
    Model::load(&file.header.config, file.load().unwrap()).unwrap()
}

fn check_tiny(spec: TinySpec, file: &str) {
    let (json, _) = read_golden(file);
    assert_eq!(
        json["seed"].as_u64(),
        Some(spec.seed),
        "{file} was made with another seed"
    );
    let dir = scratch(spec.arch.name());
    write_tiny_model(&dir.join("hf"), &spec).unwrap();
    check_against_golden(converted_model(&dir.join("hf"), &dir), file);
}

/// Every kernel this machine has: the f32 ones must match transformers to
/// float rounding and agree on every argmax; bf16 ones within their
/// rounding.
fn check_against_golden(mut model: Model, file: &str) {
    for kernel in available_kernels() {
        model.set_kernel(kernel);
        check_kernel_against_golden(&model, file);
    }
}

fn check_kernel_against_golden(model: &Model, file: &str) {
    let kernel = model.kernel();
    let tolerance = if kernel.rounds_operands() {
        BF16_TOLERANCE
    } else {
        TOLERANCE
    };
    let (json, prompts) = read_golden(file);
    assert_eq!(
        json["convert_args"],
        serde_json::json!([]),
        "{file} used non-default conversion"
    );
    let vocab = model.config().vocab_size;
    assert_eq!(json["vocab_size"].as_u64(), Some(vocab as u64));
    for prompt in prompts {
        let mut cache = model.new_cache(prompt.token_ids.len());
        let logits = model
            .forward_all(&prompt.token_ids, &mut cache, &AtomicBool::new(false))
            .unwrap();
        for (k, expected) in prompt.logits.iter().enumerate() {
            let position = prompt.first_logit_position + k;
            let actual = &logits[position * vocab..(position + 1) * vocab];
            let scale = expected.iter().fold(1f32, |m, x| m.max(x.abs()));
            let worst = actual
                .iter()
                .zip(expected)
                .map(|(a, e)| (a - e).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= tolerance * scale,
                "{file} {} position {position} kernel {}: max |qins - transformers| = {worst} (scale {scale})",
                prompt.name,
                kernel.name()
            );
            if !kernel.rounds_operands() {
                assert_eq!(
                    argmax(actual),
                    argmax(expected),
                    "{file} {} position {position} kernel {}",
                    prompt.name,
                    kernel.name()
                );
            }
        }
    }
}

#[test]
fn tiny_phi3_matches_transformers_with_short_and_long_rope_factors() {
    check_tiny(TinySpec::phi3(), "phi3-tiny.json");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_tiny(TinySpec::llama(), "llama-tiny.json");
}

#[test]
fn smollm2_from_gguf_matches_transformers() {
    let gguf = require(smollm2_gguf());
    let model = converted_model(&gguf, &scratch("smollm2"));
    check_against_golden(model, "smollm2.json");
}
