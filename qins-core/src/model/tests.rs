//! Model tests: incremental decoding equals one-shot, errors, and a real
//! model (SmolLM2) answering a factual question greedily.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::codec::{EncodeOptions, encode_matrix};
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
    // The two orders sum the same products differently; a kernel that
    // rounds its inputs (to bf16, or to 15-bit steps of a group's largest)
    // can turn such a difference into a whole rounding step. A cache bug
    // moves logits by far more than either bound.
    let tolerance = if model.kernel().rounds_operands() {
        1e-3
    } else {
        1e-4
    };
    for (i, &t) in tokens.iter().enumerate().skip(5) {
        let step = model.forward(&[t], &mut cache, &no).unwrap();
        let expected = &all[i * 50..(i + 1) * 50];
        for (a, b) in step.iter().zip(expected) {
            assert!(
                (a - b).abs() <= tolerance * b.abs().max(1.0),
                "position {i} ({}): {a} vs {b}",
                model.kernel().name()
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
fn a_decode_step_reads_every_matrix_once_and_a_tied_embedding_as_the_head() {
    let (config, weights) = random_llama(4);
    // Independently from the shapes: codes plus byte-padded sign rows of
    // every matrix; the tied embedding is the head, read whole each step.
    let expected: u64 = config
        .expected_tensors()
        .iter()
        .filter(|(_, shape)| shape.len() == 2)
        .map(|(_, s)| (s[0] * s[1] + s[0] * crate::codec::sign_row_bytes(s[1])) as u64)
        .sum();
    assert!(config.tie_word_embeddings);
    let model = Model::load(&config, weights).unwrap();
    assert_eq!(model.decode_weight_bytes(), expected);
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

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (a, b) in actual.iter().zip(expected) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    }
}

#[test]
fn a_batched_step_equals_separate_steps() {
    let (config, weights) = random_llama(4);
    let model = Model::load(&config, weights).unwrap();
    let no = AtomicBool::new(false);
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[9, 8, 7, 6, 5], &[42]];
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| {
            let mut cache = model.new_cache(16);
            model.forward(p, &mut cache, &no).unwrap();
            cache
        })
        .collect();
    let mut separate = caches.clone();
    let next = [4, 11, 0];
    let expected: Vec<Vec<f32>> = separate
        .iter_mut()
        .zip(next)
        .map(|(cache, t)| model.forward(&[t], cache, &no).unwrap())
        .collect();
    let mut steps: Vec<(u32, &mut KvCache)> = next.into_iter().zip(caches.iter_mut()).collect();
    let batched = block::forward_batch(&model, &mut steps, &no).unwrap();
    for (i, (b, e)) in batched.iter().zip(&expected).enumerate() {
        assert_close(b, e, &format!("sequence {i}"));
        assert_eq!(caches[i].len(), separate[i].len());
    }
}

#[test]
fn concurrent_decode_steps_share_passes_and_keep_their_results() {
    let (config, weights) = random_llama(5);
    let mut model = Model::load(&config, weights).unwrap();
    // A window far longer than any scheduling delay, so the batching does
    // not depend on the machine's load: each leader waits for the other
    // sequence once both have stepped (the last step, whose partner has
    // finished, waits the whole window once).
    model.batcher = batch::DecodeBatcher::with_window(std::time::Duration::from_secs(2));
    let no = AtomicBool::new(false);
    let prompts: [&[u32]; 2] = [&[3, 1, 4, 1, 5], &[2, 7, 1, 8]];
    let steps = 20;
    // Greedy continuations, one sequence at a time, without the batcher.
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|prompt| {
            let mut cache = model.new_cache(32);
            let mut logits = model.forward(prompt, &mut cache, &no).unwrap();
            (0..steps)
                .map(|_| {
                    logits = model
                        .forward(&[argmax(&logits) as u32], &mut cache, &no)
                        .unwrap();
                    logits.clone()
                })
                .collect()
        })
        .collect();
    // The same, both at once through `decode_step`, starting together.
    let ready = std::sync::Barrier::new(prompts.len());
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|prompt| {
                let (model, no, ready) = (&model, &no, &ready);
                scope.spawn(move || {
                    let mut cache = model.new_cache(32);
                    let mut logits = model.forward(prompt, &mut cache, no).unwrap();
                    ready.wait();
                    (0..steps)
                        .map(|_| {
                            logits = model
                                .decode_step(argmax(&logits) as u32, &mut cache, no)
                                .unwrap();
                            logits.clone()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (s, (a, t)) in alone.iter().zip(&together).enumerate() {
        for (step, (a, t)) in a.iter().zip(t).enumerate() {
            assert_close(t, a, &format!("sequence {s} step {step}"));
        }
    }
    let (passes, served) = model.batcher.counts();
    assert_eq!(served, 2 * steps as u64);
    // Without batching every step is a pass of its own. With it, only the
    // first step of each sequence may run alone (the other has not stepped
    // yet, so no leader waits for it).
    assert!(
        passes <= steps as u64 + 2,
        "{passes} passes for {served} steps"
    );
    println!("{served} steps in {passes} passes");
}

#[test]
fn a_decode_step_past_the_context_fails_alone() {
    let (config, weights) = random_llama(6);
    let model = Model::load(&config, weights).unwrap();
    let no = AtomicBool::new(false);
    let mut full = model.new_cache(2);
    model.forward(&[1, 2], &mut full, &no).unwrap();
    assert!(matches!(
        model.decode_step(3, &mut full, &no),
        Err(ModelError::ContextFull { .. })
    ));
    assert_eq!(full.len(), 2, "the cache comes back");
    assert!(matches!(
        model.decode_step(50, &mut model.new_cache(4), &no),
        Err(ModelError::TokenOutOfRange(50))
    ));
    let mut room = model.new_cache(4);
    model.decode_step(3, &mut room, &no).unwrap();
    assert_eq!(room.len(), 1);
}

#[test]
fn hidden_states_of_a_batch_are_those_of_each_sequence_alone() {
    let (config, weights) = random_llama(5);
    let model = Model::load(&config, weights).unwrap();
    let no = AtomicBool::new(false);
    let sequences: [&[u32]; 3] = [&[1, 7, 3, 9, 4], &[2], &[8, 8, 8, 30, 41, 12, 6]];
    let alone: Vec<Vec<f32>> = sequences
        .iter()
        .map(|tokens| {
            let mut cache = model.new_cache(tokens.len());
            let mut one = [(*tokens, &mut cache)];
            let mut states = model.hidden_states(&mut one, &no).unwrap();
            assert_eq!(cache.len(), tokens.len(), "the cache counts the tokens");
            states.remove(0)
        })
        .collect();
    let mut caches: Vec<KvCache> = sequences.iter().map(|t| model.new_cache(t.len())).collect();
    let mut batch: Vec<(&[u32], &mut KvCache)> =
        sequences.iter().copied().zip(caches.iter_mut()).collect();
    let batched = model.hidden_states(&mut batch, &no).unwrap();
    assert_eq!(batched.len(), 3);
    let tolerance = if model.kernel().rounds_operands() {
        1e-3
    } else {
        1e-4
    };
    for ((tokens, one), many) in sequences.iter().zip(&alone).zip(&batched) {
        assert_eq!(
            one.len(),
            tokens.len() * 32,
            "one row of hidden_size per token"
        );
        assert_eq!(many.len(), one.len());
        for (a, b) in many.iter().zip(one) {
            assert!((a - b).abs() <= tolerance * b.abs().max(1.0), "{a} vs {b}");
        }
    }
    // The same pass twice gives the same bits.
    let mut cache = model.new_cache(5);
    let again = model
        .hidden_states(&mut [(sequences[0], &mut cache)], &no)
        .unwrap();
    assert_eq!(again[0], alone[0]);
    // A sequence longer than its cache is refused before any work.
    let mut small = model.new_cache(2);
    assert!(matches!(
        model.hidden_states(&mut [(sequences[0], &mut small)], &no),
        Err(ModelError::ContextFull { .. })
    ));
}
