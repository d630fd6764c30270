//! `tokenizer.ggml.model == "llama"`: SentencePiece BPE as llama.cpp runs it.
//!
//! llama.cpp's SPM tokenizer turns the text (with a leading space when
//! `add_space_prefix`, spaces written as `▁`) into one symbol per character and
//! repeatedly merges the adjacent pair whose concatenation is the highest-scoring
//! token, leftmost first on equal scores; characters left outside the vocabulary
//! become `<0xNN>` byte tokens. A Hugging Face BPE model reproduces that when its
//! merge list is every split `left + right` of a token (both halves tokens),
//! ranked by the token's score. Scores are unique except for the runs of `▁`
//! (all equal), where llama.cpp grows the leftmost run first: ranking a longer
//! left half first gives the same greedy segmentation.

use serde_json::{Value as Json, json};

use super::TokenizerError;
use super::metadata::{GgufVocab, TokenType};

/// SentencePiece's word-boundary mark, which stands for a space.
const SPACE_MARK: &str = "\u{2581}";

/// The `model`, `normalizer`, `pre_tokenizer` and `decoder` of the tokenizer JSON.
pub struct SpmParts {
    pub model: Json,
    pub normalizer: Json,
    pub decoder: Json,
}

pub fn build(vocab: &GgufVocab) -> Result<SpmParts, TokenizerError> {
    if vocab.scores.is_empty() {
        return Err(TokenizerError::MissingKey("tokenizer.ggml.scores"));
    }
    // llama.cpp's default for SentencePiece vocabularies.
    let add_space_prefix = vocab.add_space_prefix.unwrap_or(true);
    Ok(SpmParts {
        model: model(vocab)?,
        normalizer: normalizer(add_space_prefix),
        decoder: decoder(add_space_prefix),
    })
}

fn model(vocab: &GgufVocab) -> Result<Json, TokenizerError> {
    let ids = vocab.token_ids()?;
    let merges: Vec<[&str; 2]> = ranked_merges(vocab, &ids)
        .into_iter()
        .map(|merge| [merge.left, merge.right])
        .collect();
    let unk_token = vocab.unknown_token_id.map(|id| vocab.text(id));
    Ok(json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk_token,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": true,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": ids,
        "merges": merges,
    }))
}

struct Merge<'a> {
    left: &'a str,
    right: &'a str,
    /// Score of `left + right`.
    score: f32,
    token_id: u32,
}

/// Every way to build a normal token from two tokens, best first.
fn ranked_merges<'a>(
    vocab: &'a GgufVocab,
    ids: &std::collections::HashMap<&str, u32>,
) -> Vec<Merge<'a>> {
    let mut merges = Vec::new();
    for (id, text) in vocab.tokens.iter().enumerate() {
        if vocab.token_type(id) != TokenType::Normal {
            continue;
        }
        let split_points = text.char_indices().map(|(at, _)| at).skip(1);
        for at in split_points {
            let (left, right) = text.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push(Merge {
                    left,
                    right,
                    score: vocab.scores[id],
                    token_id: id as u32,
                });
            }
        }
    }
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| b.left.len().cmp(&a.left.len()))
            .then_with(|| a.token_id.cmp(&b.token_id))
    });
    merges
}

/// Spaces become `▁`, and the text gets a leading one when `add_space_prefix`
/// (applied to each piece of text between added tokens, as llama.cpp does).
fn normalizer(add_space_prefix: bool) -> Json {
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK});
    if !add_space_prefix {
        return replace;
    }
    json!({
        "type": "Sequence",
        "normalizers": [{"type": "Prepend", "prepend": SPACE_MARK}, replace],
    })
}

/// `▁` back to spaces, byte tokens back to UTF-8, and the prefix space removed.
fn decoder(add_space_prefix: bool) -> Json {
    let mut steps = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({"type": "Sequence", "decoders": steps})
}
