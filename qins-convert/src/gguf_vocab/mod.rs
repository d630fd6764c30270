//! A Hugging Face `tokenizers` tokenizer built from a GGUF file's metadata, so
//! that a model converted from GGUF tokenizes as llama.cpp does.
//!
//! Two vocabulary kinds are understood (`tokenizer.ggml.model`):
//! - `llama`: SentencePiece BPE with scores and `<0xNN>` byte fallback ([`spm`]);
//! - `gpt2`: byte-level BPE with a merge list and a named pre-tokenizer ([`byte_level`]).
//!
//! Control and unknown-type tokens become special added tokens; user-defined
//! tokens become non-special added tokens (matched whole in text, as llama.cpp
//! always does for them, and kept by `decode(.., skip_special_tokens)`).

mod byte_level;
mod metadata;
mod spm;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::str::FromStr;

use candle_core::quantized::gguf_file;
use serde_json::{Value as Json, json};

use metadata::{GgufVocab, TokenType};

/// The tokenizer of a GGUF model, ready to store beside converted weights.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// A `tokenizer.json` that `tokenizers::Tokenizer::from_str` loads.
    pub tokenizer_json: String,
    /// `tokenizer.chat_template` (Jinja), when the file has one.
    pub chat_template: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Text of every special added token (control and unknown-type tokens).
    pub special_tokens: Vec<String>,
    /// Whether encoding with special tokens puts BOS first.
    pub add_bos: bool,
}

impl GgufTokenizer {
    /// Loads [`Self::tokenizer_json`].
    pub fn load(&self) -> Result<tokenizers::Tokenizer, TokenizerError> {
        tokenizers::Tokenizer::from_str(&self.tokenizer_json)
            .map_err(|e| TokenizerError::Build(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading GGUF file {path}: {message}")]
    Read { path: String, message: String },
    #[error("GGUF metadata has no {0}")]
    MissingKey(&'static str),
    #[error("GGUF metadata {key} is not {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("GGUF metadata {key} has {len} entries for {expected} tokens")]
    LengthMismatch {
        key: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("GGUF metadata {key} = {id} is outside the vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        key: &'static str,
        id: i64,
        vocab_size: usize,
    },
    #[error("token {text:?} appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error("merge {0:?} is not two tokens separated by one space")]
    BadMerge(String),
    #[error("unsupported tokenizer.ggml.model {0:?} (supported: \"llama\", \"gpt2\")")]
    UnsupportedModel(String),
    #[error("unsupported tokenizer.ggml.pre {0:?} for a gpt2 vocabulary")]
    UnsupportedPreTokenizer(String),
    #[error("the built tokenizer does not load: {0}")]
    Build(String),
}

/// Reads the GGUF header at `path` and builds its tokenizer.
pub fn tokenizer_from_gguf_path(path: &Path) -> Result<GgufTokenizer, TokenizerError> {
    let read_error = |message: String| TokenizerError::Read {
        path: path.display().to_string(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| read_error(e.to_string()))?;
    tokenizer_from_gguf(&content)
}

/// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
pub fn tokenizer_from_gguf(content: &gguf_file::Content) -> Result<GgufTokenizer, TokenizerError> {
    let vocab = GgufVocab::read(content)?;
    let (model, normalizer, pre_tokenizer, decoder, default_add_bos) = match vocab.model.as_str() {
        "llama" => {
            let parts = spm::build(&vocab)?;
            (
                parts.model,
                parts.normalizer,
                Json::Null,
                parts.decoder,
                true,
            )
        }
        "gpt2" => {
            let parts = byte_level::build(&vocab)?;
            (
                parts.model,
                Json::Null,
                parts.pre_tokenizer,
                parts.decoder,
                false,
            )
        }
        other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
    };
    let add_bos = vocab.add_bos.unwrap_or(default_add_bos) && vocab.bos_token_id.is_some();
    let add_eos = vocab.add_eos.unwrap_or(false) && vocab.eos_token_id.is_some();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(&vocab),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(&vocab, add_bos, add_eos),
        "decoder": decoder,
        "model": model,
    });
    let built = GgufTokenizer {
        tokenizer_json: tokenizer.to_string(),
        chat_template: vocab.chat_template.clone(),
        bos_token_id: vocab.bos_token_id,
        eos_token_id: vocab.eos_token_id,
        special_tokens: special_token_texts(&vocab),
        add_bos,
    };
    built.load()?;
    Ok(built)
}

fn special_token_texts(vocab: &GgufVocab) -> Vec<String> {
    let special = |id: usize| {
        matches!(
            vocab.token_type(id),
            TokenType::Control | TokenType::Unknown
        )
    };
    (0..vocab.tokens.len())
        .filter(|&id| special(id))
        .map(|id| vocab.tokens[id].clone())
        .collect()
}

fn added_tokens(vocab: &GgufVocab) -> Vec<Json> {
    let phi3 = uses_phi3_rstrip(vocab);
    let mut added = Vec::new();
    for (id, text) in vocab.tokens.iter().enumerate() {
        let token_type = vocab.token_type(id);
        if !token_type.is_added() {
            continue;
        }
        added.push(json!({
            "id": id,
            "content": text,
            "single_word": false,
            "lstrip": false,
            "rstrip": phi3 && !matches!(text.as_str(), "<unk>" | "<s>" | "<|endoftext|>"),
            "normalized": false,
            "special": token_type != TokenType::UserDefined,
        }));
    }
    added
}

/// Phi-3's chat markers swallow the whitespace after them (Hugging Face's
/// `rstrip`). GGUF does not store that attribute: llama.cpp sets it when
/// `general.name` contains "phi-3"/"phi3"; the architecture "phi3" is taken as
/// well, since Phi-3.5 files are named "Phi 3.5 ..." and share the tokenizer.
fn uses_phi3_rstrip(vocab: &GgufVocab) -> bool {
    vocab.model_name.contains("phi-3")
        || vocab.model_name.contains("phi3")
        || vocab.architecture == "phi3"
}

/// BOS/EOS around each sequence as the GGUF asks; byte-level vocabularies also
/// get their offsets trimmed.
fn post_processor(vocab: &GgufVocab, add_bos: bool, add_eos: bool) -> Json {
    let template = template_processing(vocab, add_bos, add_eos);
    if vocab.model != "gpt2" {
        return template;
    }
    let trim_offsets = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    match template {
        Json::Null => trim_offsets,
        template => json!({"type": "Sequence", "processors": [trim_offsets, template]}),
    }
}

fn template_processing(vocab: &GgufVocab, add_bos: bool, add_eos: bool) -> Json {
    let bos = vocab.bos_token_id.filter(|_| add_bos);
    let eos = vocab.eos_token_id.filter(|_| add_eos);
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special =
        |id: u32, type_id: u32| json!({"SpecialToken": {"id": vocab.text(id), "type_id": type_id}});
    let sequence = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let wrap = |name: &str, type_id: u32| {
        let mut pieces = Vec::new();
        pieces.extend(bos.map(|id| special(id, type_id)));
        pieces.push(sequence(name, type_id));
        pieces.extend(eos.map(|id| special(id, type_id)));
        pieces
    };
    let mut pair = wrap("A", 0);
    pair.extend(wrap("B", 1));
    let mut special_tokens = serde_json::Map::new();
    for id in bos.into_iter().chain(eos) {
        let text = vocab.text(id);
        special_tokens.insert(
            text.to_string(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    json!({
        "type": "TemplateProcessing",
        "single": wrap("A", 0),
        "pair": pair,
        "special_tokens": special_tokens,
    })
}
