//! The tokenizer part of a GGUF file's metadata (`tokenizer.ggml.*`), read into
//! plain Rust values with lenient numeric types (writers differ in whether ids
//! are u32 or i32, flags bool or integer).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

use super::TokenizerError;

/// llama.cpp's `llama_token_type`, as stored in `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    /// `<unk>`-like tokens; llama.cpp matches them in text only when parsing specials.
    Unknown,
    /// Special tokens (BOS, EOS, chat markers).
    Control,
    /// Tokens that llama.cpp always matches whole in text, special parsing or not.
    UserDefined,
    Unused,
    /// `<0xNN>` byte-fallback tokens.
    Byte,
}

impl TokenType {
    fn from_code(code: i64) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            // 1 is normal; 0 ("undefined") and anything newer is treated as normal text.
            _ => Self::Normal,
        }
    }

    /// Tokens that the tokenizer matches whole in the input before the model runs.
    pub fn is_added(self) -> bool {
        matches!(self, Self::Unknown | Self::Control | Self::UserDefined)
    }
}

/// Everything the tokenizer builders need from the metadata.
#[derive(Debug)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2" (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name for byte-level BPE.
    pub pre: Option<String>,
    /// `general.name`, lower-cased (llama.cpp keys some token attributes on it).
    pub model_name: String,
    /// `general.architecture`.
    pub architecture: String,
    pub tokens: Vec<String>,
    /// Empty when the file has no `tokenizer.ggml.scores`.
    pub scores: Vec<f32>,
    pub token_types: Vec<TokenType>,
    /// `tokenizer.ggml.merges` ("left right"); empty when absent.
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    pub fn read(content: &Content) -> Result<Self, TokenizerError> {
        let meta = &content.metadata;
        let tokens = string_array(meta, "tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?;
        let vocab = Self {
            model: string(meta, "tokenizer.ggml.model")?
                .ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?,
            pre: string(meta, "tokenizer.ggml.pre")?,
            model_name: string(meta, "general.name")?
                .unwrap_or_default()
                .to_lowercase(),
            architecture: string(meta, "general.architecture")?.unwrap_or_default(),
            scores: float_array(meta, "tokenizer.ggml.scores")?.unwrap_or_default(),
            token_types: token_types(meta, tokens.len())?,
            merges: string_array(meta, "tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_token_id: token_id(meta, "tokenizer.ggml.bos_token_id", tokens.len())?,
            eos_token_id: token_id(meta, "tokenizer.ggml.eos_token_id", tokens.len())?,
            unknown_token_id: token_id(meta, "tokenizer.ggml.unknown_token_id", tokens.len())?,
            add_bos: flag(meta, "tokenizer.ggml.add_bos_token")?,
            add_eos: flag(meta, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag(meta, "tokenizer.ggml.add_space_prefix")?,
            chat_template: string(meta, "tokenizer.chat_template")?,
            tokens,
        };
        vocab.check_lengths()?;
        Ok(vocab)
    }

    fn check_lengths(&self) -> Result<(), TokenizerError> {
        let expected = self.tokens.len();
        if !self.scores.is_empty() && self.scores.len() != expected {
            return Err(TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.scores",
                len: self.scores.len(),
                expected,
            });
        }
        Ok(())
    }

    pub fn token_type(&self, id: usize) -> TokenType {
        self.token_types[id]
    }

    /// Token text -> id; a text that appears twice cannot be one vocabulary entry.
    pub fn token_ids(&self) -> Result<HashMap<&str, u32>, TokenizerError> {
        let mut ids = HashMap::with_capacity(self.tokens.len());
        for (id, text) in self.tokens.iter().enumerate() {
            let id = id as u32;
            if let Some(first) = ids.insert(text.as_str(), id) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: id,
                });
            }
        }
        Ok(ids)
    }

    /// The text of a token id that was range-checked when read.
    pub fn text(&self, id: u32) -> &str {
        &self.tokens[id as usize]
    }
}

fn wrong_type(key: &'static str, expected: &'static str) -> TokenizerError {
    TokenizerError::WrongType { key, expected }
}

fn string(
    meta: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<String>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(key, "string")),
    }
}

fn array<'a>(
    meta: &'a HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<&'a [Value]>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(wrong_type(key, "array")),
    }
}

fn string_array(
    meta: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(items) = array(meta, key)? else {
        return Ok(None);
    };
    let strings = items.iter().map(|item| match item {
        Value::String(s) => Ok(s.clone()),
        _ => Err(wrong_type(key, "array of strings")),
    });
    strings.collect::<Result<_, _>>().map(Some)
}

fn float_array(
    meta: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<f32>>, TokenizerError> {
    let Some(items) = array(meta, key)? else {
        return Ok(None);
    };
    let floats = items.iter().map(|item| match item {
        Value::F32(v) => Ok(*v),
        Value::F64(v) => Ok(*v as f32),
        _ => Err(wrong_type(key, "array of floats")),
    });
    floats.collect::<Result<_, _>>().map(Some)
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// Token types; a file without them gets all-normal tokens.
fn token_types(
    meta: &HashMap<String, Value>,
    vocab_size: usize,
) -> Result<Vec<TokenType>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(items) = array(meta, KEY)? else {
        return Ok(vec![TokenType::Normal; vocab_size]);
    };
    if items.len() != vocab_size {
        return Err(TokenizerError::LengthMismatch {
            key: KEY,
            len: items.len(),
            expected: vocab_size,
        });
    }
    let types = items
        .iter()
        .map(|item| integer(item).map(TokenType::from_code));
    types
        .collect::<Option<_>>()
        .ok_or(wrong_type(KEY, "array of integers"))
}

fn token_id(
    meta: &HashMap<String, Value>,
    key: &'static str,
    vocab_size: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = meta.get(key) else {
        return Ok(None);
    };
    let id = integer(value).ok_or(wrong_type(key, "integer"))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < vocab_size => Ok(Some(id)),
        // llama.cpp writes -1 (or u32::MAX) for "no such token".
        _ if id < 0 || id == i64::from(u32::MAX) => Ok(None),
        _ => Err(TokenizerError::IdOutOfRange {
            key,
            id,
            vocab_size,
        }),
    }
}

fn flag(meta: &HashMap<String, Value>, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => integer(other)
            .map(|v| Some(v != 0))
            .ok_or(wrong_type(key, "bool")),
    }
}
