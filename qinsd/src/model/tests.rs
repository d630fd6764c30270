//! Model tests: incremental decoding equals one-shot, errors, and a real
//! model (SmolLM2) answering a factual question greedily.

use std::str::FromStr;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::codec::{EncodeOptions, encode_matrix};
use crate::container::QinsFile;
use crate::convert::{self, ConvertOptions};
use crate::fixtures::paths::{require, smollm2_gguf};
use crate::rng::SplitMix64;
use crate::weights::{F32Tensor, QinsMatrix, Weight};

fn random_llama(seed: u64) -> (ModelConfig, ResidentWeights) {
    let config = ModelConfig::from_hf_json(&serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
        "max_position_embeddings": 64, "tie_word_embeddings": true, "rope_theta": 10000.0,
    }))
    .unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut weights = ResidentWeights::default();
    for (name, shape) in config.expected_tensors() {
        let values: Vec<f32> = if shape.len() == 1 {
            (0..shape[0])
                .map(|_| 1.0 + 0.1 * rng.next_normal() as f32)
                .collect()
        } else {
            (0..shape[0] * shape[1])
                .map(|_| 0.2 * rng.next_normal() as f32)
                .collect()
        };
        let weight = if let [rows, cols] = shape[..] {
            Weight::Qins(QinsMatrix::from_encoded(
                encode_matrix(&values, rows, cols, &EncodeOptions::default()).unwrap(),
            ))
        } else {
            Weight::F32(F32Tensor {
                shape,
                data: values,
            })
        };
        weights.insert(name, weight);
    }
    (config, weights)
}

#[test]
fn incremental_decoding_equals_one_shot() {
    let (config, weights) = random_llama(1);
    let model = Model::load(&config, weights).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 7 % 50) as u32).collect();
    let no = AtomicBool::new(false);
    let mut cache = model.new_cache(32);
    let all = model.forward_all(&tokens, &mut cache, &no).unwrap();
    assert_eq!(cache.len(), 12);
    let mut cache = model.new_cache(32);
    model.forward(&tokens[..5], &mut cache, &no).unwrap();
    for (i, &t) in tokens.iter().enumerate().skip(5) {
        let step = model.forward(&[t], &mut cache, &no).unwrap();
        let expected = &all[i * 50..(i + 1) * 50];
        for (a, b) in step.iter().zip(expected) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "position {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn cancellation_context_and_token_errors() {
    let (config, weights) = random_llama(2);
    let model = Model::load(&config, weights).unwrap();
    let mut cache = model.new_cache(4);
    assert!(matches!(
        model.forward(&[1, 2], &mut cache, &AtomicBool::new(true)),
        Err(ModelError::Cancelled)
    ));
    assert_eq!(cache.len(), 0, "a cancelled forward caches nothing");
    let no = AtomicBool::new(false);
    assert!(matches!(
        model.forward(&[1, 2, 3, 4, 5], &mut cache, &no),
        Err(ModelError::ContextFull {
            needed: 5,
            capacity: 4
        })
    ));
    assert!(matches!(
        model.forward(&[50], &mut cache, &no),
        Err(ModelError::TokenOutOfRange(50))
    ));
}

#[test]
fn missing_tensor_is_named() {
    let (config, mut weights) = random_llama(3);
    weights
        .take_matrix("model.layers.1.mlp.up_proj.weight", 48, 32)
        .unwrap();
    let err = Model::load(&config, weights).err().expect("load must fail");
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn smollm2_greedily_names_the_capital_of_france() {
    let gguf = require(smollm2_gguf());
    let path = std::env::temp_dir().join(format!("qins-model-test-{}.qins", std::process::id()));
    let source = convert::open_source(gguf.to_str().unwrap(), &mut |_| {}).unwrap();
    convert::convert(
        source.as_ref(),
        &path,
        &ConvertOptions::default(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let file = QinsFile::open(&path).unwrap();
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
    let _ = std::fs::remove_file(&path);
    assert!(text.contains("Paris"), "reply: {text:?}");
}
