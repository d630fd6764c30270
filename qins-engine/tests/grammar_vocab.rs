//! Token bytes (logprobs) and the JSON grammar on the real vocabularies:
//! Phi-3's SentencePiece one (`▁` for spaces, `<0xNN>` byte fallback) from
//! its vocabulary GGUF, and SmolLM2's GPT-2 byte-level one. A "model" with
//! random preferences is driven through a schema: whatever it wants, the
//! decoded text is JSON that validates.

use qins_convert::gguf_vocab::tokenizer_from_gguf_path;
use qins_core::model::argmax;
use qins_engine::constraint::{GrammarVocab, OutputFormat};
use qins_engine::logprobs::TokenBytes;
use qins_test_support::paths::{phi3_vocab_gguf, require, smollm2_gguf};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

fn load(path: std::path::PathBuf) -> Tokenizer {
    tokenizer_from_gguf_path(&require(path))
        .unwrap()
        .load()
        .unwrap()
}

const TEXT: &str = "Hello world, ünïcode 😀 {\"a\": 1}\n\tend";

/// The tokens' bytes spell the text (SentencePiece adds its leading space).
fn spells(tokenizer: &Tokenizer, leading_space: bool) {
    let ids = tokenizer.encode(TEXT, false).unwrap().get_ids().to_vec();
    let bytes = TokenBytes::new(tokenizer);
    let joined: Vec<u8> = ids.iter().flat_map(|&id| bytes.bytes(id)).collect();
    let expected = if leading_space {
        format!(" {TEXT}")
    } else {
        TEXT.to_string()
    };
    assert_eq!(String::from_utf8_lossy(&joined), expected, "{ids:?}");
}

/// Greedy over pseudo-random logits within the schema; the decoded reply.
fn drive(tokenizer: &Tokenizer, end: &str, schema: Value) -> String {
    let vocab = tokenizer.get_vocab_size(true);
    let end = tokenizer.token_to_id(end).expect("end token");
    let grammar = GrammarVocab::new(tokenizer, vocab, &[end]).unwrap();
    let mut constraint = grammar
        .constraint(&OutputFormat::JsonSchema(schema))
        .unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut ids = Vec::new();
    for _ in 0..400 {
        let mut logits: Vec<f32> = (0..vocab)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        // The "model" would rather stop at once.
        logits[end as usize] = 10.0;
        constraint.mask(&mut logits).unwrap();
        let token = argmax(&logits) as u32;
        if token == end {
            return tokenizer.decode(&ids, true).unwrap();
        }
        constraint.accept(token).unwrap();
        ids.push(token);
    }
    panic!(
        "never ended: {:?}",
        tokenizer.decode(&ids, true).unwrap_or_default()
    );
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "maxLength": 12 },
            "n": { "type": "integer", "minimum": -5, "maximum": 5 },
            "tags": { "type": "array", "items": { "enum": ["a", "b"] }, "maxItems": 3 },
        },
        "required": ["name", "n", "tags"],
        "additionalProperties": false,
    })
}

fn check(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(
        value["name"]
            .as_str()
            .is_some_and(|s| s.chars().count() <= 12),
        "{text}"
    );
    assert!(
        value["n"].as_i64().is_some_and(|n| (-5..=5).contains(&n)),
        "{text}"
    );
    let tags = value["tags"].as_array().expect("tags");
    assert!(
        tags.len() <= 3 && tags.iter().all(|t| t == "a" || t == "b"),
        "{text}"
    );
}

#[test]
fn phi3_sentencepiece_vocabulary() {
    let tokenizer = load(phi3_vocab_gguf());
    spells(&tokenizer, true);
    let text = drive(&tokenizer, "<|end|>", schema());
    check(text.trim_start());
}

#[test]
fn smollm2_byte_level_vocabulary() {
    let tokenizer = load(smollm2_gguf());
    spells(&tokenizer, false);
    check(&drive(&tokenizer, "<|im_end|>", schema()));
}
