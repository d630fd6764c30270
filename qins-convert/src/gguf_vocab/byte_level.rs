//! `tokenizer.ggml.model == "gpt2"`: byte-level BPE with an explicit merge list,
//! split into words first by the regex that `tokenizer.ggml.pre` names.

use serde_json::{Value as Json, json};

use super::TokenizerError;
use super::metadata::GgufVocab;

/// Llama 3's word regex (llama.cpp pre-type LLAMA3).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's word regex: like Llama 3's but one digit at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `model`, `pre_tokenizer` and `decoder` of the tokenizer JSON.
pub struct ByteLevelParts {
    pub model: Json,
    pub pre_tokenizer: Json,
    pub decoder: Json,
}

pub fn build(vocab: &GgufVocab) -> Result<ByteLevelParts, TokenizerError> {
    Ok(ByteLevelParts {
        model: model(vocab)?,
        pre_tokenizer: pre_tokenizer(vocab.pre.as_deref().unwrap_or("(none)"))?,
        decoder: byte_level(true),
    })
}

fn model(vocab: &GgufVocab) -> Result<Json, TokenizerError> {
    if vocab.merges.is_empty() {
        return Err(TokenizerError::MissingKey("tokenizer.ggml.merges"));
    }
    let merges = vocab
        .merges
        .iter()
        .map(|merge| match merge.split_once(' ') {
            Some((left, right)) => Ok([left, right]),
            None => Err(TokenizerError::BadMerge(merge.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let unk_token = vocab.unknown_token_id.map(|id| vocab.text(id));
    Ok(json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk_token,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": false,
        "vocab": vocab.token_ids()?,
        "merges": merges,
    }))
}

/// Byte-level step; with `use_regex` it also splits words with GPT-2's regex.
fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn regex_split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name, the same word
/// splitting as llama.cpp's regexes for it. Names not listed (including
/// "default", which llama.cpp gives its own punctuation-splitting regexes) are
/// refused rather than guessed.
fn pre_tokenizer(pre: &str) -> Result<Json, TokenizerError> {
    let steps = match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => vec![byte_level(true)],
        // Every digit on its own, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]
        }
        "llama3" | "llama-v3" | "llama-bpe" => {
            vec![regex_split(LLAMA3_REGEX), byte_level(false)]
        }
        "qwen2" | "deepseek-r1-qwen" => vec![regex_split(QWEN2_REGEX), byte_level(false)],
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    };
    Ok(json!({"type": "Sequence", "pretokenizers": steps}))
}
